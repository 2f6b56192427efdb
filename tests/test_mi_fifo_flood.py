"""Issue 14 item 7: one MI client cannot hold the others.

One writer process floods the MI FIFO with 1 MiB of tiny requests (in more rounds if
fewer than three probes got in during it); meanwhile another client asks again and
again. Its requests must be answered while the flood goes on, not after it: at least
three are, and once written they wait (median) less than a quarter of what one flood
round took in the same run (a server that served the flood first would make them
wait about half a round). No fixed time is asserted: on a loaded machine both sides
slow down (issue 14 asked for 100 ms: printed, and here about 1-7 ms). The probe's
write itself may first wait for room in the pipe, which the kernel shares between
the two writers as it likes (the server takes a page at a time): that wait is printed,
not asserted.
Every flood request is counted as dropped, and the log gets a few lines, not one per
request.
"""
import os
import statistics
import subprocess
import sys
import time

import pytest

from test_mi_fifo import TAG, Running
from kamflat.server.fiforeply import MAX_QUEUED_PER_REPLY
from kamflat.tools.fifoclient import make_reply_fifo, read_reply, write_request

FLOODER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
view = memoryview(sys.stdin.buffer.read())
while view:
    view = view[os.write(fd, view):]
"""
# One 1 MiB flood can be over before a probe got in (a fast server): the flood is sent
# again, as a round of its own, until three probes were answered during floods.
MAX_ROUNDS = 8
KINDS = {
    "reply FIFO missing": b":version:%s_none\n\n",
    "reply FIFO without reader": b":version:%s_deaf\n\n",
    "unknown command": b":nosuch:%s_none\nx\n\n",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_flood_of_tiny_requests_holds_up_nobody(tmp_path, kind):
    srv = Running(tmp_path)
    deaf = "/tmp/%s_deaf" % TAG
    probe_path = "/tmp/%s_probe" % TAG
    probe = b":version:%s_probe\n\n" % TAG.encode()
    os.mkfifo(deaf)
    try:
        clean = srv.ask(probe, TAG + "_probe")
        one = KINDS[kind] % TAG.encode()
        flood = one * ((1 << 20) // len(one))
        served, whole = [], []      # after the write returned / including the write
        rounds, flood_time = 0, 0.0
        while len(served) < 3 and rounds < MAX_ROUNDS:
            rounds += 1
            flooder = subprocess.Popen([sys.executable, "-c", FLOODER, srv.path],
                                       stdin=subprocess.PIPE)
            started = time.monotonic()
            flooder.stdin.write(flood)
            flooder.stdin.close()
            while flooder.poll() is None:
                fd = make_reply_fifo(probe_path)
                try:
                    asked = time.monotonic()
                    write_request(srv.path, probe, 30)
                    written = time.monotonic()
                    assert read_reply(fd, 30) == clean
                    done = time.monotonic()
                finally:
                    os.close(fd)
                    os.unlink(probe_path)
                if flooder.poll() is None:      # still flooding when answered
                    served.append(done - written)
                    whole.append(done - asked)
            flood_time += time.monotonic() - started
            assert flooder.wait(10) == 0
        print("%s: %d floods of 1 MiB in %.2f s, %d probes answered during them, max %.1f "
              "ms after the write, median %.1f ms with the write" % (
                  kind, rounds, flood_time, len(served), 1000 * max(served, default=0),
                  1000 * statistics.median(whole or [0])))
        assert len(served) >= 3
        assert statistics.median(served) < flood_time / rounds / 4
        # every flood request is accounted for (a probe landing inside the flood's
        # non-atomic write cuts one flood request into two dropped pieces)
        # A probe after the flood is answered only once every flood request before it was
        # read and taken (the FIFO keeps their order); then give up on the deaf client.
        assert srv.ask(probe, TAG + "_probe") == clean
        # each tick gives up on the deaf client's current request; the next one queued
        # behind it (at most MAX_QUEUED_PER_REPLY) starts then, and the next tick drops it
        for _ in range(MAX_QUEUED_PER_REPLY + 1):
            srv.server.jobs.tick(time.monotonic() + 10)
        dropped = srv.management.statistics._values[("mi_fifo", "dropped")]
        errors = srv.management.statistics._values[("mi_fifo", "errors")]
        requests = rounds * (len(flood) // len(one))
        counted = dropped + (errors if kind == "unknown command" else 0)
        assert requests - 2 * (len(whole) + rounds) <= counted
        # a few log lines, the repeats counted
        assert len(srv.records) < 200
        assert any("more like this)" in r for r in srv.records)
    finally:
        srv.close()
        os.unlink(deaf)
