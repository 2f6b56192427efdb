"""AccHandler against what Kamailio 5.6 wrote (tests/data/acc_sip), and over real UDP
with the real sipsak as the client."""
import base64
import json
import select
import shutil
import socket
import subprocess
import threading
from contextlib import contextmanager

import pytest

from conftest import DATA, wait_until
from kamflat.acc.logic import AccHandler
from kamflat.flatstore.record import encode_record
from kamflat.server.sipnet import open_listen_sockets, serve_udp

ACC_SIP = DATA / "acc_sip"
REFERENCE_EXTRA = "src_user=$fU;src_domain=$fd;dst_ouser=$tU"
# Requests the reference config sends through tm's relay (t_relay to a dead port): kamflat
# answers statelessly and does not relay, so their timer-written 408 record has no peer.
RELAYED = {"fwd_timeout_408"}


def reference_handler(**kw):
    """kamflat configured like kamailio-5.6-reference.cfg (the 404 route included)."""
    kw.setdefault("db_extra", REFERENCE_EXTRA)
    kw.setdefault("reply_overrides", ["OTHER=404 Not here"])
    return AccHandler(**kw)


def sent_requests():
    return [(item["name"], base64.b64decode(item["request_b64"]), item["reply_status"])
            for item in json.loads((ACC_SIP / "sip_sent.json").read_text())]


def normalized(lines, time_field=6):
    """Records with the time column blanked, sorted (file numbers differ anyway)."""
    out = []
    for line in lines:
        fields = line.split(b"|")
        fields[time_field] = b"TIME"
        out.append(b"|".join(fields))
    return sorted(out)


def acc_file_records(directory, pattern="acc_*.log"):
    """Every record line of the files (records may span physical lines when a header was
    folded, so split on a newline followed by a method name)."""
    records = []
    for path in sorted(directory.glob(pattern)):
        data = path.read_bytes()
        records += [r for r in data.split(b"\n") if r]
    return records


def test_records_equal_the_ones_kamailio_wrote():
    handler = reference_handler(clock=lambda: 1795763336)
    produced, statuses = [], {}
    for name, data, _status in sent_requests():
        if name in RELAYED:
            continue
        outcome = handler.handle(data, ("127.0.0.1", 53473))
        statuses[name] = outcome.reply.split(b"\r\n", 1)[0].decode()
        produced += [encode_record(values, encode_delimiter=True).rstrip(b"\n")
                     for table, values in outcome.records if table == "acc"]
    expected = [r for r in acc_file_records(ACC_SIP) if b"|call-fwd-13|" not in r]
    assert normalized(produced) == normalized(expected)
    assert statuses == {name: status for name, _, status in sent_requests()
                        if name not in RELAYED}
    counters = handler.take_counters()
    assert counters["core:rcv_requests"] == len(statuses)
    assert counters["kamflat:acc_skipped"] == 1          # the From Kamailio cannot parse
    assert counters["sl:404_replies"] == 1 and counters["sl:200_replies"] == 13


def test_missed_calls_and_reply_overrides():
    handler = reference_handler(reply_overrides=["INVITE=486 Busy Here", "OTHER=404 Not here"])
    invite = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
    bye = dict((n, d) for n, d, _ in sent_requests())["sl_bye_basic"]
    out = handler.handle(invite, ("127.0.0.1", 53473))
    assert out.reply.startswith(b"SIP/2.0 486 Busy Here\r\n")
    [(table, values)] = out.records
    assert table == "missed_calls" and values[4:6] == ["486", "Busy Here"]
    [(table, values)] = handler.handle(bye, ("127.0.0.1", 53473)).records
    assert table == "acc" and values[4:6] == ["200", "OK"]
    all_in_acc = reference_handler(reply_overrides=["INVITE=486 Busy Here"], missed_calls=False)
    assert all_in_acc.handle(invite, ("127.0.0.1", 1)).records[0][0] == "acc"


# --- over the network ------------------------------------------------------------------

@contextmanager
def kamflat_udp(handler, listen=("udp:127.0.0.1:0",)):
    """AccHandler served on real UDP sockets in a thread; yields (ports, lines, reasons)
    where lines collects (table, encoded line) in write order."""
    socks = open_listen_sockets(list(listen))
    lines, reasons = [], []
    lock = threading.Lock()

    def write(table, values):
        with lock:
            lines.append((table, encode_record(values, encode_delimiter=True)))

    stop = threading.Event()
    thread = threading.Thread(target=serve_udp, daemon=True,
                              args=(socks, handler, write, stop,
                                    lambda reason, src: reasons.append(reason)))
    thread.start()
    try:
        yield [s.getsockname()[1] for s in socks], lines, reasons
    finally:
        stop.set()
        thread.join(5)
        for s in socks:
            s.close()
        assert not thread.is_alive()


SIPSAK = shutil.which("sipsak")
needs_sipsak = pytest.mark.skipif(SIPSAK is None, reason="sipsak is not installed "
                                  "(Debian package sipsak)")


def run_sipsak(tmp_path, port, message, host="127.0.0.1"):
    msg = tmp_path / "msg.txt"
    msg.write_bytes(message)
    return subprocess.run([SIPSAK, "-vv", "-f", str(msg), "-s", "sip:bob@%s:%d" % (host, port)],
                          capture_output=True, timeout=20)


SIPSAK_INVITE = (b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
                 b"From: \"Sip Sak\" <sip:sipsak@example.com>;tag=sak-1\r\n"
                 b"To: <sip:bob@example.org>\r\nCall-ID: sipsak-call-1\r\nCSeq: 1 INVITE\r\n"
                 b"User-Agent: foo\r\n bar|baz\r\nContent-Length: 0\r\n\r\n")


@needs_sipsak
def test_sipsak_gets_a_reply_and_the_record_is_written(tmp_path):
    handler = reference_handler(db_extra=REFERENCE_EXTRA + ";ua=$ua;src_ip=$si")
    with kamflat_udp(handler) as (ports, lines, _reasons):
        done = run_sipsak(tmp_path, ports[0], SIPSAK_INVITE)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: lines, what="the acc record")
    [(table, line)] = lines
    fields = line.split(b"|")
    assert table == "acc"
    assert fields[:6] == [b"INVITE", b"sak-1", b"", b"sipsak-call-1", b"200", b"OK"]
    # the folded header keeps its CR LF: one record over two physical lines, as Kamailio
    assert fields[7:] == [b"sipsak", b"example.com", b"bob", b"foo\r\n bar%7Cbaz",
                          b"127.0.0.1\n"]


@needs_sipsak
def test_sipsak_and_a_busy_override(tmp_path):
    handler = reference_handler(reply_overrides=["INVITE=486 Busy Here"])
    with kamflat_udp(handler) as (ports, lines, _):
        done = run_sipsak(tmp_path, ports[0], SIPSAK_INVITE)
        wait_until(lambda: lines, what="the missed-call record")
    assert done.returncode != 0                 # sipsak reports the 486 as a failure
    assert b"486 Busy Here" in done.stdout + done.stderr
    [(table, line)] = lines
    assert table == "missed_calls" and line.split(b"|")[4:6] == [b"486", b"Busy Here"]


def test_ipv6_listen(tmp_path):
    # sipsak 0.9.8 cannot parse [v6] URIs, so this client is a plain socket.
    handler = reference_handler(db_extra="src_ip=$si;src_port=$sp")
    with kamflat_udp(handler, listen=["udp:[::1]:0"]) as (ports, lines, _):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.bind(("::1", 0))
            port = s.getsockname()[1]
            s.sendto(SIPSAK_INVITE.replace(b"From:", b"Via: SIP/2.0/UDP [::1]:%d;branch="
                                           b"z9hG4bK-6;rport\r\nFrom:" % port),
                     ("::1", ports[0]))
            reply = s.recv(65535)
    assert reply.startswith(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [::1]:%d;branch=z9hG4bK-6;"
                            b"rport=%d;received=[::1]\r\n" % (port, port))
    [(table, line)] = lines
    assert line.split(b"|")[7:] == [b"::1", b"%d\n" % port]


def test_malformed_datagrams_over_udp_are_dropped_and_counted():
    handler = reference_handler()
    with kamflat_udp(handler) as (ports, lines, reasons):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            for junk in (b"\x00\xff garbage", b"SIP/2.0 200 OK\r\n\r\n"):
                s.sendto(junk, ("127.0.0.1", ports[0]))
            good = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
            good = good.replace(b"127.0.0.1:53473", b"127.0.0.1:%d" % s.getsockname()[1])
            s.sendto(good, ("127.0.0.1", ports[0]))
            assert s.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
    assert len(lines) == 1 and len(reasons) == 2
    assert any("response" in r for r in reasons) and any("bad_first_line" in r for r in reasons)
    counters = handler.take_counters()
    assert counters["core:rcv_requests"] == 1 and counters["core:rcv_replies"] == 1
    assert counters["kamflat:sip_malformed"] == 1


def test_handler_from_a_kamailio_config(tmp_path):
    from kamflat.config.model import load_model
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text('loadmodule "sl.so"\nloadmodule "db_flatstore.so"\nloadmodule "acc.so"\n'
                   'listen=udp:127.0.0.1:5070\n'
                   'modparam("acc", "db_url", "flatstore:%s")\n'
                   'modparam("acc", "db_extra", "src_user=$fU;ua=$ua")\n'
                   'modparam("acc", "db_table_missed_calls", "failed")\n'
                   'modparam("kamflat", "acc_methods", "INVITE|MESSAGE")\n'
                   'modparam("kamflat", "sip_reply", "202 Accepted")\n'
                   'modparam("kamflat", "sip_reply", "INVITE=486 Busy Here")\n'
                   'modparam("kamflat", "sip_reply", "OTHER=404 Not here")\n' % tmp_path)
    handler = load_model(str(cfg)).sip_handler()
    assert handler.keys[-2:] == ["src_user", "ua"]
    assert handler.reply_for("INVITE") == (486, "Busy Here")
    assert handler.reply_for("MESSAGE") == (202, "Accepted")
    assert handler.reply_for("BYE") == (404, "Not here")
    invite = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
    assert handler.handle(invite, ("127.0.0.1", 5)).records[0][0] == "failed"


def test_the_receive_loop_survives_icmp_errors_and_wakes_one_waiter():
    """sipnet.drain (what every writer runs) goes on after an ECONNREFUSED from an ICMP
    port unreachable, and the selector writers wait in is EPOLLEXCLUSIVE where the kernel
    has it."""
    from kamflat.server import sipnet
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.connect(("127.0.0.1", dead_port))   # a connected socket reports ICMP errors
        server.send(b"x")                           # -> port unreachable -> ECONNREFUSED
        server.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", dead_port))  # the peer the server is connected to
            good = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
            client.sendto(good.replace(b"127.0.0.1:53473", b"127.0.0.1:%d" % dead_port),
                          server.getsockname())
            written = []
            with sipnet.selector() as sel:
                sel.register(server, 1)
                assert sel.select(5)
                taken = sipnet.drain(server, reference_handler(),
                                     lambda records: written.extend(records) or True)
            assert client.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
    assert taken == 1 and [table for table, _ in written] == ["acc"]
    if getattr(select, "EPOLLEXCLUSIVE", 0):
        assert isinstance(sipnet.selector(), sipnet.ExclusiveSelector)


def test_counters_survive_many_methods():
    """Counts are kept per method plan (a bounded memo): a client sending more methods
    than the memo holds loses none."""
    handler = reference_handler()
    invite = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
    for i in range(1200):
        handler.handle(invite.replace(b"INVITE ", b"M%d " % i, 1), ("127.0.0.1", 5))
    handler.handle(invite, ("127.0.0.1", 5))
    counters = handler.take_counters()
    assert counters["core:rcv_requests"] == 1201
    assert counters["sl:404_replies"] == 1200 and counters["kamflat:acc_records"] == 1
    assert handler.take_counters() == {}
