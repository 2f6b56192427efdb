"""SIP parsing cost in-process: one INVITE through AccHandler.handle, and the worst
datagram shapes at 8 KiB and 64 KiB (parsing must be linear in the datagram size).

Printed: µs per INVITE handled (reply built, record made, the reference db_extra),
the same for a bare `pass`-loop baseline, then for every shape the ms it takes at
8 KiB and at 64 KiB (65,535 bytes) and their ratio (8 is linear, 64 quadratic; target: every 64 KiB
datagram under 50 ms), with every pseudo-variable as an acc column so that every parser
runs. tests/test_sip_linear.py runs the same shapes.

    python3 benchmarks/bench_sip_parse.py [--repeat 5] [--invites 20000]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamflat.acc.logic import AccHandler  # noqa: E402

REFERENCE_EXTRA = "src_user=$fU;src_domain=$fd;dst_ouser=$tU"
# Every pseudo-variable, so the shapes go through every parser (From, URIs, headers).
EVERY_PV = ";".join("c%d=%s" % (i, pv) for i, pv in enumerate(
    ["$fU", "$fd", "$fn", "$fu", "$tU", "$td", "$tu", "$ru", "$rU", "$rd", "$ci", "$cs",
     "$ua", "$si", "$sp", "$rm", "$hdr(X)", "$hdr(Via)"]))
# What benchmarks/sipload.c sends.
INVITE = (b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-kfl-17\r\n"
          b"From: \"Load\" <sip:load@example.com>;tag=lt17\r\n"
          b"To: <sip:bob@example.org>\r\n"
          b"Call-ID: kfl-17\r\n"
          b"CSeq: 1 INVITE\r\n"
          b"Max-Forwards: 70\r\n"
          b"Content-Length: 0\r\n\r\n")
SMALL, BIG = 8 * 1024, 65535      # bytes: the largest datagram UDP can carry
FIRST = "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
BASE = {"via": "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-1",
        "from": "From: <sip:a@example.com>;tag=ft", "to": "To: <sip:b@example.org>",
        "call-id": "Call-ID: c-1", "cseq": "CSeq: 1 INVITE"}


def _request(line="", key=None, first=FIRST):
    """The base INVITE with the header `key` replaced by `line` (appended when key is
    None), ending in the empty line."""
    lines = [line if k == key else v for k, v in BASE.items()]
    if key is None and line:
        lines.append(line)
    return (first + "".join(v + "\r\n" for v in lines) + "\r\n").encode(
        "utf-8", "surrogateescape")


def _shape(size, header_fmt, unit, key=None):
    """_request() with a header made of `header_fmt`, its @FILL@ repeating `unit` so
    that the datagram is about `size` bytes."""
    probe = len(_request(header_fmt.replace("@FILL@", ""), key))
    n = max(1, (size - probe) // len(unit))
    while True:
        data = _request(header_fmt.replace("@FILL@", unit * n), key)
        if len(data) <= size or n == 1:
            return data
        n -= 1


def shapes(size):
    """{name: datagram of about `size` bytes} for the worst cases known."""
    out = {
        "long line without ':'": _shape(size, "@FILL@", "a"),
        "long line, ':' at its end": _shape(size, "@FILL@:", "a"),
        "thousands of short headers": _shape(size, "X: 1@FILL@", "\r\nX: 1"),
        "quoted display name": _shape(size, 'To: "@FILL@" <sip:b@x>', "a", "to"),
        "quoted display, escapes": _shape(size, 'To: "@FILL@" <sip:b@x>', "\\a", "to"),
        "token display with blanks": _shape(size, "To: a@FILL@b <sip:b@x>", " ", "to"),
        "blanks, no '<'": _shape(size, "To: a@FILL@b", " ", "to"),
        "deep URI params in To": _shape(size, "To: <sip:b@x@FILL@>", ";p=1", "to"),
        "deep To params": _shape(size, "To: <sip:b@x>@FILL@", ";p=1", "to"),
        "To params, slow path": _shape(size, "To: <sip:b@x>;q=\"\"@FILL@", ";p", "to"),
        "deep From URI params": _shape(size, "From: <sip:a@x@FILL@>;tag=1", ";p=1", "from"),
        "From URI, slow path": _shape(size, "From: <sip:a@x;@FILL@>;tag=1", "a:", "from"),
        "long R-URI": _request(first="INVITE sip:b@h%s SIP/2.0\r\n"
                               % (";p=1" * max(1, size // 4 - 60))),
        "hundreds of Vias": _shape(size, "Via: SIP/2.0/UDP h;branch=x@FILL@",
                                   "\r\nVia: SIP/2.0/UDP h;branch=x"),
        "Via params": _shape(size, "Via: SIP/2.0/UDP 1.2.3.4;branch=x@FILL@", ";rport",
                             "via"),
        "many commas in Via": _shape(size, "Via: SIP/2.0/UDP h;branch=x@FILL@", ",", "via"),
        "many commas in To": _shape(size, "To: <sip:b@x>;tag=a@FILL@", ",", "to"),
        "many To headers": _shape(size, "X: 1@FILL@", "\r\nTo: <sip:b@x>"),
        "folded empty lines": _shape(size, "X:@FILL@ 1", "\r\n "),
        "leading blank lines": b"\r\n" * (size // 2 - 90) + _request(),
        "long Call-ID": _shape(size, "Call-ID: @FILL@", "c", "call-id"),
        "CSeq blanks": _shape(size, "CSeq: 1@FILL@INVITE", " ", "cseq"),
        "header name blanks": _shape(size, "X@FILL@: 1", " "),
        "no final empty line": _shape(size, "X: @FILL@", "y")[:-2],
    }
    return out


def time_handle(handler, data, repeat):
    """The best of `repeat` runs of one handle(), in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        handler.handle(data, ("127.0.0.1", 5060))
        best = min(best, time.perf_counter() - t)
    return best


def invite_us(handler, n):
    """µs per handle() of the load generator's INVITE, and of an empty loop."""
    handle, src = handler.handle, ("127.0.0.1", 40000)
    t = time.perf_counter()
    for _ in range(n):
        handle(INVITE, src)
    spent = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        pass
    empty = time.perf_counter() - t
    return spent / n * 1e6, empty / n * 1e6


def reference_handler():
    """kamflat configured as the reference Kamailio config (what bench_sip.py runs)."""
    return AccHandler(db_extra=REFERENCE_EXTRA, reply_overrides=["OTHER=404 Not here"])


def every_pv_handler():
    """Accounts INVITEs with every pseudo-variable as a column."""
    return AccHandler(db_extra=EVERY_PV)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--invites", type=int, default=20000)
    args = parser.parse_args()
    us, empty = invite_us(reference_handler(), args.invites)
    print("AccHandler.handle, one INVITE (reference db_extra): %.1f us "
          "(empty loop %.2f us; target <= 35 us)" % (us, empty))
    handler = every_pv_handler()
    small, big = shapes(SMALL), shapes(BIG)
    worst = 0.0
    print("%-28s %8s %9s %9s %6s" % ("shape", "bytes", "8 KiB ms", "64 KiB ms", "ratio"))
    for name in small:
        t8 = time_handle(handler, small[name], args.repeat)
        t64 = time_handle(handler, big[name], args.repeat)
        worst = max(worst, t64)
        print("%-28s %8d %9.2f %9.2f %6.1f" % (name, len(big[name]), t8 * 1e3, t64 * 1e3,
                                               t64 / t8))
    print("slowest 64 KiB datagram: %.1f ms (target < 50 ms)" % (worst * 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
