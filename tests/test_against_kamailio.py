"""The same SIP traffic through the real Kamailio 5.6 and through kamflat: same replies
(To tag and Server header aside), same acc records (time aside), line by line.

Kamailio runs with the reference config (tests/data/acc_sip) moved to a temporary
directory and a free port, with db_extra widened to every pseudo-variable kamflat
supports, so each edge case below is checked column by column.
"""
import base64
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import free_udp_port, DATA, wait_until
from test_acc_sip import kamflat_udp, reference_handler

KAMAILIO = "/usr/sbin/kamailio"
pytestmark = pytest.mark.skipif(not os.access(KAMAILIO, os.X_OK),
                                reason="%s is not installed (Debian package kamailio)"
                                % KAMAILIO)

EXTRA = ("src_user=$fU;src_domain=$fd;dst_ouser=$tU;fn=$fn;fu=$fu;td=$td;tu=$tu;ru=$ru;"
         "ruser=$rU;rd=$rd;ci=$ci;cs=$cs;ua=$ua;si=$si;sp=$sp;rm=$rm;xfoo=$hdr(X-Foo);"
         "hf=$hdr(f)")
VIA = "Via: SIP/2.0/UDP 127.0.0.1:CLIENTPORT;branch=z9hG4bK-%d"


def sip(first, *headers, n=0, end="\r\n", via=True):
    lines = [first] + ([VIA % n] if via else []) + list(headers)
    return (end.join(lines) + end + end).encode("utf-8", "surrogateescape")


def base(n, *extra, first="INVITE sip:bob@127.0.0.1:5070 SIP/2.0", **kw):
    """A request with From/To/Call-ID/CSeq unless `extra` replaces them."""
    names = {h.split(":", 1)[0].strip().lower() for h in extra}
    defaults = [("from", "From: <sip:alice@example.com>;tag=ft-%d" % n),
                ("to", "To: <sip:bob@example.org>"), ("call-id", "Call-ID: edge-%d" % n),
                ("cseq", "CSeq: %d %s" % (n, first.split(" ")[0]))]
    return sip(first, *extra, *[h for k, h in defaults if k not in names], n=n, **kw)


# Edge cases beyond sip_sent.json: (name, datagram).
EDGE = [
    ("folded_user_agent", base(101, "User-Agent: foo\r\n bar|baz", "X-Foo: plain")),
    ("compact_headers", sip("INVITE sip:bob@127.0.0.1 SIP/2.0",
                            "f: Bob Smith <sip:bs@example.com>;tag=c1", "t: sip:x@example.org",
                            "i: compact-102", "CSeq: 102 INVITE", "l: 0", n=102)),
    ("bare_from_with_tag", base(103, "From: sip:bare@example.com;tag=b-103")),
    ("sips_tel_and_params", base(104, 'From: "Q" <sips:u:pw@host.example:5061;transport=tls>'
                                 ';tag=t104;x="a;b"', "To: <tel:+1-555-0104>;foo=bar",
                                 first="BYE sips:bob@127.0.0.1:5070;lr SIP/2.0")),
    ("empty_and_double_tag", base(105, "From: <sip:a@example.com>;tag=a;tag=b",
                                  "To: <sip:b@example.org>;tag=")),
    ("rport_alias_via", sip("INVITE sip:bob@127.0.0.1 SIP/2.0",
                            "From: <sip:r@example.com>;tag=r106", "To: <sip:b@example.org>",
                            "Call-ID: edge-106", "CSeq: 1 INVITE", n=106).replace(
                                b"z9hG4bK-106", b"z9hG4bK-106;rport;alias")),
    ("cseq_method_differs", base(107, "CSeq: 7 BYE")),
    ("ruri_without_user", base(108, first="INVITE sip:127.0.0.1:5070 SIP/2.0")),
    ("lf_line_ends", base(109, end="\n")),
    ("space_before_colon", base(110, "From : <sip:sp@example.com>;tag=s110",
                                "X-Foo: one", "x-foo: two")),
    ("ipv6_from_host", base(111, "From: <sip:v6@[2001:db8::1]:5060>;tag=v111")),
    ("from_without_uri_scheme", base(112, "From: Alice <alice@example.com>;tag=n112")),
    ("quoted_display_escapes", base(113, 'From: "say \\"hi\\"" <sip:q@example.com>;tag=q113')),
    ("options_not_accounted", base(114, first="OPTIONS sip:bob@127.0.0.1 SIP/2.0")),
    ("cancel", base(115, first="CANCEL sip:bob@127.0.0.1 SIP/2.0")),
    ("ack_no_reply", base(116, first="ACK sip:bob@127.0.0.1 SIP/2.0")),
    ("bad_param_backslash", base(117, "From: <sip:a@example.com>;tag=x\\y")),
    ("empty_call_id", base(118, "Call-ID: ")),
    ("lowercase_method", base(124, first="invite sip:bob@127.0.0.1 SIP/2.0")),
    ("unknown_method", base(125, first="FOO sip:bob@127.0.0.1 SIP/2.0")),
    ("second_via_and_body", base(126, "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-2nd",
                                 "Content-Type: application/sdp", "Content-Length: 4")
     + b"v=0\n"),
    ("comma_in_tag_and_token_to", base(127, "From: <sip:c@example.com>;tag=a,b",
                                       "To: Bob Jones <sip:bob@example.org>")),
    ("header_value_empty_and_long", base(128, "X-Foo:", "User-Agent: " + "U" * 3000)),
    ("garbage", b"\x00\x01 hello there\r\n\r\n"),
    ("a_response", b"SIP/2.0 200 OK\r\n" + base(119).split(b"\r\n", 1)[1]),
    ("missing_via", base(120, via=False)),
    ("bad_to", base(121, "To: <sip:b@example.org")),
    ("cseq_number_not_checked", base(122, "CSeq: x INVITE")),
    ("cseq_without_method", base(123, "CSeq: 5")),
]


def traffic():
    recorded = json.loads((DATA / "acc_sip" / "sip_sent.json").read_text())
    sent = [(item["name"], base64.b64decode(item["request_b64"])) for item in recorded
            if not item["name"].startswith(("tm_", "fwd_"))]   # tm/relay: not emulated
    return [(name, data.replace(b"127.0.0.1:53473", b"127.0.0.1:CLIENTPORT"))
            for name, data in sent] + EDGE


def exchange(s, port, items, no_reply_wait=0.2):
    """Send each datagram from the client socket `s` (the same one for both servers, so
    $sp and the Via agree); collect {name: reply or None}."""
    replies = {}
    client = b"%d" % s.getsockname()[1]
    for name, data in items:
        s.sendto(data.replace(b"CLIENTPORT", client), ("127.0.0.1", port))
        s.settimeout(no_reply_wait if name in EXPECT_NO_REPLY else 5)
        try:
            replies[name] = s.recv(65535)
        except socket.timeout:
            replies[name] = None
    return replies


EXPECT_NO_REPLY = {"ack_no_reply", "garbage", "a_response", "missing_via", "bad_to",
                   "cseq_without_method"}


def normalize_reply(reply):
    if reply is None:
        return None
    reply = re.sub(rb";tag=[0-9a-f]{32}\.[0-9a-f]{8}", b";tag=SL-TAG", reply)
    return re.sub(rb"\nServer: [^\r\n]*", b"\nServer: X", reply)


def records(data):
    """Records of flatstore data: a record may span lines (folded header), so a new one
    starts only where a line begins with a method name and a '|'."""
    return [r for r in re.split(rb"\n(?=[A-Za-z]+\|)", data) if r]


def without_time(recs):
    out = []
    for r in recs:
        fields = r.rstrip(b"\n").split(b"|")
        fields[6] = b"TIME"
        out.append(b"|".join(fields))
    return sorted(out)


def kamailio_config(tmp_path, port):
    text = (DATA / "acc_sip" / "kamailio-5.6-reference.cfg").read_text()
    text = text.replace("/var/run/k56", str(tmp_path)).replace(
        "listen=udp:127.0.0.1:5070", "listen=udp:127.0.0.1:%d" % port)
    text = re.sub(r'modparam\("acc", "db_extra", "[^"]*"\)',
                  'modparam("acc", "db_extra", "%s")' % EXTRA, text)
    (tmp_path / "acc").mkdir()
    (tmp_path / "run").mkdir()
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(text)
    return cfg


def kamailio_answers(port):
    probe = sip("OPTIONS sip:probe@127.0.0.1 SIP/2.0", "From: <sip:p@x>;tag=p",
                "To: <sip:p@x>", "Call-ID: probe", "CSeq: 1 OPTIONS")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        s.sendto(probe.replace(b"CLIENTPORT", b"%d" % s.getsockname()[1]), ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def test_same_traffic_same_replies_and_records(tmp_path):
    port = free_udp_port()
    cfg = kamailio_config(tmp_path, port)
    log = open(tmp_path / "kamailio.log", "wb")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    proc = subprocess.Popen([KAMAILIO, "-DD", "-E", "-f", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or kamailio_answers(port), timeout=15,
                   what="kamailio to answer on port %d" % port)
        assert proc.poll() is None, (tmp_path / "kamailio.log").read_text()[-2000:]
        kam_replies = exchange(client, port, traffic())
        handler = reference_handler(db_extra=EXTRA, reply_overrides=["OTHER=404 Not here"])
        with kamflat_udp(handler) as (ports, lines, reasons):
            flat_replies = exchange(client, ports[0], traffic())
        flat_records = [line for table, line in lines if table == "acc"]
        acc_dir = tmp_path / "acc"
        kam_data = lambda: b"".join(p.read_bytes() for p in sorted(acc_dir.glob("acc_*.log")))
        wait_until(lambda: len(records(kam_data())) >= len(flat_records), timeout=10,
                   what="kamailio's %d records" % len(flat_records))
        time.sleep(0.2)          # nothing more may arrive: a surplus would show below
        kam_records = records(kam_data())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        client.close()
    names = [name for name, _ in traffic()]
    assert {n: normalize_reply(kam_replies[n]) for n in names} == \
        {n: normalize_reply(flat_replies[n]) for n in names}
    assert without_time(flat_records) == without_time(kam_records)
    assert {n for n in names if flat_replies[n] is None} == EXPECT_NO_REPLY
