"""Random bytes on the ingest socket never stop the server nor cost the good lines."""
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from serverutil import Server, statistic
from kamflat.client import send


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("fuzz"), children=2) as running:
        yield running


def good(i):
    return json.dumps({"table": "acc", "values": ["INVITE", "fuzz-%d" % i, 200, None]})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.binary(max_size=300), max_size=8), seed=st.integers(0, 10**6))
def test_junk_lines_between_good_ones(server, junk, seed):
    lines = []
    for i, blob in enumerate(junk):
        lines.append(good(seed * 100 + i).encode())
        lines.append(blob.replace(b"\n", b" "))
    lines.append(good(seed * 100 + 99).encode())
    result = send(str(server.ingest), lines, timeout=30)
    goods = len(junk) + 1
    assert result.lines == len(lines)
    # Every good line is written; a junk line is written only if it happens to be valid.
    assert result.written >= goods and result.written + result.error_count == len(lines)


def test_a_sender_that_vanishes_mid_line_harms_no_one(server):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.ingest))
    sock.sendall(good(1).encode() + b"\n" + b'{"table": "acc", "val')
    sock.close()
    assert send(str(server.ingest), [good(2)]).ok
    assert server.process.poll() is None
    assert statistic(server.mi("get_statistics", "ingest:"), "ingest:connections") >= 2
