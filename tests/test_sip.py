"""kamflat.proto.sip / sipaddr / pvar / sipnet: parsing as Kamailio 5.6 does, replies as sl does."""
import socket

import pytest
from hypothesis import given, settings, strategies as st

from kamflat.acc import pv as pvar

from kamflat.proto import sip, sipaddr, sipuri
from kamflat.acc.logic import AccHandler
from kamflat.proto.sip import SipError, build_reply, parse_request, reply_destination
from kamflat.proto.sipaddr import parse_name_addr
from kamflat.proto.sipuri import AddrError, parse_uri
from kamflat.server.sipnet import ListenError, open_listen_sockets, parse_listen


def request(*headers, first="INVITE sip:bob@127.0.0.1 SIP/2.0", end="\r\n"):
    base = {"via": "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-1",
            "from": "From: <sip:a@example.com>;tag=ft", "to": "To: <sip:b@example.org>",
            "call-id": "Call-ID: c-1", "cseq": "CSeq: 1 INVITE"}
    lines = list(headers)
    names = {h.split(":", 1)[0].strip().lower() for h in headers}
    short = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
    names |= {short.get(n, n) for n in names}
    lines += [v for k, v in base.items() if k not in names]
    return (first + end + end.join(lines) + end + end).encode("utf-8", "surrogateescape")


# --- request line and headers ---------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x\r\n\r\n", "response"),
    (b"hello world\r\n\r\n", "bad_first_line"),
    (b"INVITE sip:a@b SIP/3.0\r\n\r\n", "bad_first_line"),
    (b"INVITE sip:a@b", "bad_first_line"),
    (b"", "bad_first_line"),
    (b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "bad_header"),
    (b"INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@b>\r\n\r\n", "missing_header"),
])
def test_bad_datagrams_are_rejected_with_a_reason(data, reason):
    with pytest.raises(SipError) as e:
        parse_request(data)
    assert e.value.reason == reason


def test_compact_headers_and_folding():
    r = parse_request(request("v: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-2;rport",
                              "f: \"A\" <sip:al@example.com>;tag=1", "t: sip:bo@example.org",
                              "i: c-compact", "User-Agent: foo\r\n bar|baz",
                              "Subject:\r\n  starts folded "))
    assert r.header("subject").value == "starts folded"
    assert r.call_id == "c-compact"
    assert r.header("from").name == "f"
    assert r.from_addr().tag == "1"
    assert r.to.uri == "sip:bo@example.org"
    assert r.header("user-agent").value == "foo\r\n bar|baz"      # folding kept raw
    assert (r.via1.host, r.via1.port, r.via1.params["rport"]) == ("10.0.0.1", 5070, None)


def test_lf_only_line_ends_are_accepted():
    r = parse_request(request(end="\n"))
    assert (r.method, r.call_id, r.cseq_num, r.cseq_method) == ("INVITE", "c-1", "1", "INVITE")


@pytest.mark.parametrize("header", [
    "CSeq: 1", "CSeq: 1 INVITE x", "To: <sip:b@example.org", "Via: HTTP/1.1 example.org",
    "Content-Length: ten"])
def test_bad_parsed_headers_drop_the_request(header):
    with pytest.raises(SipError) as e:
        parse_request(request(header))
    assert e.value.reason == "bad_header"


# --- From/To (parse_addr_spec) and URIs (parse_uri), the facts observed in 5.6 ------

@pytest.mark.parametrize("body, display, uri, tag", [
    ('"Alice" <sip:alice@example.com>;tag=ft-1', '"Alice"', "sip:alice@example.com", "ft-1"),
    ("Alice Liddell <sip:al@example.com>", "Alice Liddell", "sip:al@example.com", ""),
    ("sip:bare@example.com;tag=x1", "", "sip:bare@example.com", "x1"),
    ('"Dis|play" <sip:al|ice@ex|ample.com>;tag=ft|3', '"Dis|play"', "sip:al|ice@ex|ample.com",
     "ft|3"),
    ("<sip:a@b>;foo;TAG=Up;bar=\"q;v\"", "", "sip:a@b", "Up"),
    ("<sip:a@b>;tag=", "", "sip:a@b", ""),
    ("<sip:a@b>\r\n ;tag=folded", "", "sip:a@b", "folded"),
])
def test_name_addr(body, display, uri, tag):
    parsed = parse_name_addr(body)
    assert (parsed.display, parsed.uri, parsed.tag) == (display, uri, tag)


@pytest.mark.parametrize("body", [
    '"a\\"b\tc" <sip:bs\\x@example.com>;tag=ft-11',    # backslash in the URI (observed)
    "<sip:a@b>;tag=a\\b", '<sip:a@b> x', '"unterminated <sip:a@b>', "<sip:a@b>;;x"])
def test_name_addr_rejected_like_kamailio(body):
    with pytest.raises(AddrError):
        parse_name_addr(body)


@pytest.mark.parametrize("uri, user, host, port", [
    ("sip:alice@example.com", "alice", "example.com", ""),
    ("sip:example.com", "", "example.com", ""),
    ("sip:to|user@example.org", "to|user", "example.org", ""),
    ("sip:j\u00fcrgen@example.com", "j\u00fcrgen", "example.com", ""),
    ("sip:a%7Cb@example.com:5080;transport=udp", "a%7Cb", "example.com", "5080"),
    ("sips:u:pw@[::1]:5061", "u", "[::1]", "5061"),
    ("sip:u;x=1@h.example", "u;x=1", "h.example", ""),
    ("tel:+1-555", "+1-555", "", ""),
    ("SIP:Up@Host", "Up", "Host", ""),
])
def test_uri(uri, user, host, port):
    u = parse_uri(uri)
    assert (u.user, u.host, u.port) == (user, host, port)


@pytest.mark.parametrize("uri", [
    "sip:al|ice@ex|ample.com", "sip:j\u00fcrgen@b\u00fccher.example", "http://x",
    "sip:", "sip:a@", "sip:a@b:123456", "sip:a@b:5x", "sip:a@-b"])
def test_uri_rejected_like_kamailio(uri):
    with pytest.raises(AddrError):
        parse_uri(uri)


_ADDR_CHARS = st.sampled_from(list('<>";:=\\ \t,@tagTAG|x1.-[]')
                              + ["\r\n ", "sip:", "\u00fc", ";tag=", "<s"])


def _outcome(fn, value):
    try:
        return fn(value)
    except AddrError:
        return "error"


@settings(max_examples=1000, deadline=None)
@given(st.lists(_ADDR_CHARS, max_size=25).map("".join),
       st.sampled_from(["", '"D" ', "D x ", "<sip:u@h>", "<sip:a@b.c:5>;tag=", "sip:u@h",
                        "<", '"x"<', "A <sip:"]))
def test_fast_paths_agree_with_kamailio_state_machines(tail, head):
    value = (head + tail).strip(" \t\r\n")
    assert _outcome(sipaddr._parse_name_addr, value) == \
        _outcome(sipaddr._parse_name_addr_slow, value)
    assert _outcome(sipaddr.parse_name_addr, value) == \
        _outcome(sipaddr._parse_name_addr_slow, value)          # the memo too
    uri = "sip:" + tail
    assert _outcome(sipuri._parse_uri, uri) == _outcome(sipuri._parse_uri_slow, uri)
    assert _outcome(sipuri.parse_uri, uri) == _outcome(sipuri._parse_uri_slow, uri)


_VIA_CHARS = st.sampled_from(list(" \t;,=:[]/.x1") + ["\r\n ", "SIP/2.0/UDP ", "h", ";rport",
                                                       ";branch=", "\u00fc", "5060"])


def _via_outcome(value):
    try:
        v = sip.parse_via(value)
    except SipError:
        return "error"
    return v.host, v.port, v.params, v.end, v.value


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(["SIP/2.0/UDP h", "SIP/2.0/UDP 1.2.3.4:5060;rport", "SIP/2.0/TCP [::1]",
                        "SIP / 2.0 / UDP h ; x", ""]),
       st.lists(_VIA_CHARS, max_size=12).map("".join),
       st.lists(_VIA_CHARS, max_size=6).map("".join))
def test_via_memo_agrees_with_the_via_regex(head, middle, branch):
    """parse_via's memo of the part before a last ;branch= gives what _VIA_RE gives."""
    value = head + middle + ";branch=" + branch
    direct = sip._parse_via(value)
    expected = "error" if direct is None else (direct.host, direct.port, direct.params,
                                               direct.end, direct.value)
    assert _via_outcome(value) == expected
    assert _via_outcome(value) == expected      # the memo, now filled


@settings(max_examples=1000, deadline=None)
@given(st.lists(_ADDR_CHARS, max_size=20).map("".join),
       st.sampled_from(['"D" <sip:u@h>', "<sip:a@b.c:5>", "A B <sip:u@h;x=1>", "<sip:u@h>;p"]),
       st.lists(_ADDR_CHARS, max_size=5).map("".join))
def test_name_addr_memo_agrees_with_the_state_machine(middle, head, tag):
    """parse_name_addr's memo of the part before a last ;tag= gives the state machine's
    result."""
    value = (head + middle + ";tag=" + tag).strip(" \t\r\n")
    for _ in range(2):                           # parsed, then from the memo
        assert _outcome(sipaddr.parse_name_addr, value) == \
            _outcome(sipaddr._parse_name_addr_slow, value)


# --- pseudo-variables -------------------------------------------------------------

def test_pvars_against_one_request():
    r = parse_request(request(
        'From: Alice Liddell <sip:al@example.com;x=1>;tag=t1', "To: <sip:bob@example.org>",
        "User-Agent: ua/1", "X-Foo: first", "x-foo: second",
        first="OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0"))
    src = ("127.0.0.9", 4242)
    got = {spec: pvar.evaluate(spec, r, src) for spec in
           ["$fU", "$fd", "$fn", "$fu", "$tU", "$td", "$tu", "$ru", "$rU", "$rd", "$ci",
            "$cs", "$ua", "$si", "$sp", "$rm", "$hdr(X-Foo)", "$hdr(f)", "$hdr(Nope)"]}
    assert got == {
        "$fU": "al", "$fd": "example.com", "$fn": "Alice Liddell",
        "$fu": "sip:al@example.com;x=1", "$tU": "bob", "$td": "example.org",
        "$tu": "sip:bob@example.org", "$ru": "sip:bob@127.0.0.1:5070", "$rU": "bob",
        "$rd": "127.0.0.1", "$ci": "c-1", "$cs": "1", "$ua": "ua/1", "$si": "127.0.0.9",
        "$sp": "4242", "$rm": "OPTIONS", "$hdr(X-Foo)": "first",
        "$hdr(f)": "Alice Liddell <sip:al@example.com;x=1>;tag=t1", "$hdr(Nope)": None}


def test_parse_db_extra():
    assert pvar.parse_db_extra(" src_user=$fU; src_domain = $fd;h=$hdr(X-A);") == [
        ("src_user", "$fU"), ("src_domain", "$fd"), ("h", "$hdr(X-A)")]
    for bad, word in [("src_user", "src_user"), ("x=$nope", "$nope"), ("=$fU", "=$fU"),
                      ("a b=$fU", "a b"), ("x=$hdr(a b)", "$hdr(a b)")]:
        with pytest.raises(pvar.PvarError) as e:
            pvar.parse_db_extra("ok=$ci;" + bad)
        assert word in str(e.value)


# --- replies -----------------------------------------------------------------------

def test_reply_copies_headers_and_adds_tag_like_sl():
    r = parse_request(request(
        "Via: SIP/2.0/UDP 10.0.0.1:40000;branch=z9hG4bK.3;rport;alias",
        "t: <sip:bob@example.org>;x=y", "Record-Route: <sip:rr>", "i: c2"))
    out = build_reply(r, 200, "OK", "TAG", source=("127.0.0.1", 41000),
                      server="kamailio (5.6.3 (x86_64/linux))").decode()
    assert out == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:40000;branch=z9hG4bK.3;rport=41000;alias"
        ";received=127.0.0.1\r\n"
        "t: <sip:bob@example.org>;x=y;tag=TAG\r\n"
        "Record-Route: <sip:rr>\r\n"
        "i: c2\r\n"
        "From: <sip:a@example.com>;tag=ft\r\n"
        "CSeq: 1 INVITE\r\n"
        "Server: kamailio (5.6.3 (x86_64/linux))\r\n"
        "Content-Length: 0\r\n\r\n")
    assert reply_destination(r, ("127.0.0.1", 41000)) == ("127.0.0.1", 41000)
    no_rport = parse_request(request("Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK.4"))
    assert reply_destination(no_rport, ("127.0.0.1", 41000)) == ("127.0.0.1", 5999)
    out = build_reply(no_rport, 404, "Not here", "T", source=("127.0.0.1", 5999)).decode()
    assert out.startswith("SIP/2.0 404 Not here\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;"
                          "branch=z9hG4bK.4\r\n")
    assert "Record-Route" not in out


def test_existing_to_tag_is_kept():
    r = parse_request(request("To: <sip:b@example.org>;tag=tt-1"))
    assert "To: <sip:b@example.org>;tag=tt-1\r\n" in build_reply(r, 200, "OK", "X").decode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(
    lambda head, junk: request(head) + junk,
    st.text(alphabet='<>";:=\\ \t\r\n,@aT|g\u00fc', max_size=40), st.binary(max_size=20)))
def test_handler_never_raises(data):
    outcome = AccHandler(db_extra="a=$fU;b=$fd;c=$tU;d=$rU;e=$ua;f=$fn").handle(
        data, ("127.0.0.1", 5000))
    assert outcome.reply is None or outcome.reply.startswith(b"SIP/2.0 ")
    assert outcome.reply is not None or outcome.reason or data.startswith(b"ACK")


# --- listen= and sockets --------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("udp:127.0.0.1:5070", (socket.AF_INET, "127.0.0.1", 5070)),
    ("udp:[::1]:5071", (socket.AF_INET6, "::1", 5071)),
    ("127.0.0.1:5072", (socket.AF_INET, "127.0.0.1", 5072)),
    ("udp:*:5060", (socket.AF_INET, "0.0.0.0", 5060)),
    ("10.1.2.3", (socket.AF_INET, "10.1.2.3", 5060)),
])
def test_parse_listen(spec, expected):
    assert parse_listen(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("tcp:127.0.0.1:5060", "only udp"), ("udp:[::1:5060", "IPv6"),
    ("udp:::1:5060", "brackets"), ("udp:127.0.0.1:99999", "bad port"),
    ("udp::5060", "no address")])
def test_parse_listen_errors(spec, words):
    with pytest.raises(ListenError) as e:
        parse_listen(spec)
    assert words in str(e.value) and spec in str(e.value)


def test_open_listen_sockets_v4_v6_and_clear_bind_error():
    socks = open_listen_sockets(["udp:127.0.0.1:0", "udp:[::1]:0"])
    try:
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_INET6]
        busy = "udp:127.0.0.1:%d" % socks[0].getsockname()[1]
        with pytest.raises(ListenError) as e:
            open_listen_sockets(["udp:127.0.0.1:0", busy])
        assert busy in str(e.value) and "cannot bind" in str(e.value)
    finally:
        for s in socks:
            s.close()
