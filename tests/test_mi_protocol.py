"""kamflat.proto.mi: the MI FIFO grammar and reply framing, table-driven (no IO)."""
import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from conftest import DATA
from kamflat.proto.mi import (
    NEED_DATA, Arg, MIParser, Node, ParseError, ProtocolDrop, Request, UnknownCommand,
    check_reply_name, command_failed, command_not_available, encode_reply, encode_request, parse_error_reply,
)

COMMANDS = ("uptime version pwd arg which kill ps debug get_statistics reset_statistics "
            "clear_statistics shv_get shv_set flat_rotate").split()
NO_INPUT = "uptime version pwd arg which kill ps flat_rotate".split()


def events(*chunks, parser=None):
    parser = parser or MIParser(COMMANDS, NO_INPUT)
    out = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
    return out


def req(command, *args, reply="r"):
    return Request(command, reply, tuple(Arg(*a) if isinstance(a, tuple) else Arg("", a)
                                         for a in args))


GRAMMAR = [
    # (id, request bytes, expected events)
    ("plain", b":which:r\n\n", [req("which")]),
    ("args", b":get_statistics:r\nrcv_requests\nfwd_requests\n\n",
     [req("get_statistics", "rcv_requests", "fwd_requests")]),
    ("named", b":get_statistics:r\nname::core:\n\n", [req("get_statistics", ("name", "core:"))]),
    ("named_spaces", b":debug:r\n  a  ::  b c  \n\n", [req("debug", ("a", "b c"))]),
    ("empty_name", b":debug:r\n::val\n\n", [req("debug", "val")]),
    ("single_colon_literal", b":debug:r\na:b:c\n\n", [req("debug", "a:b:c")]),
    ("double_sep_once", b":debug:r\na::b::c\n\n", [req("debug", ("a", "b::c"))]),
    ("name_only", b":debug:r\na::\n\n", [req("debug", ("a", ""))]),
    ("indent_and_crlf", b":debug:r\r\n\t x \r\n\n", [req("debug", "x")]),
    ("first_line_trailing_ws", b":which:r \t\r\n\n", [req("which")]),
    ("blank_lines_skipped", b":debug:r\n\r\n   \nx\n\n", [req("debug", "x")]),
    ("quoted", b':debug:r\n"  a b  "\n\n', [req("debug", "  a b  ")]),
    ("quoted_named", b':debug:r\nn:: "q"\n\n', [req("debug", ("n", "q"))]),
    ("quoted_escape", b':debug:r\n"say \\"hi\\" now"\n\n', [req("debug", 'say "hi" now')]),
    ("quoted_multiline", b':debug:r\n"one\ntwo"\n\n', [req("debug", "one\ntwo")]),
    ("quoted_trailing_ws", b':debug:r\n"v"  \r\n\n', [req("debug", "v")]),
    ("raw_bytes", b":debug:r\na|b\tc\\d \xc3\xa9\n\n", [req("debug", "a|b\tc\\d \u00e9")]),
    ("unquoted_with_quote", b':shv_set:r\nab"cd\n\n', [ParseError("shv_set", "r", 'parse error around "')]),
    ("quote_garbage", b':shv_set:r\n"abc" x\n\n', [ParseError("shv_set", "r", "parse error around x")]),
    ("empty_quoted", b':shv_set:r\n""\n\n', [ParseError("shv_set", "r", 'empty quoted value ""')]),
    ("quote_unterminated", b':shv_set:r\n"abc\n\n',
     [ParseError("shv_set", "r", "end line inside a quoted value")]),
    ("unknown", b":nosuch:r\nx\n\n", [UnknownCommand("nosuch", "r")]),
    ("case_sensitive", b":WHICH:r\n\n", [UnknownCommand("WHICH", "r")]),
    ("no_input_drains", b':flat_rotate:r\nacc\n"x\n\n', [req("flat_rotate")]),
    ("reply_name_space_colon", b":which:a b:c\n\n", [req("which", reply="a b:c")]),
]


@pytest.mark.parametrize("raw, expected", [g[1:] for g in GRAMMAR], ids=[g[0] for g in GRAMMAR])
def test_grammar(raw, expected):
    assert events(raw) == expected


DROPS = [
    ("leading_space", b"  :which:r\n\n", "must begin with ':'"),
    ("leading_tab", b"\t:which:r\n\n", "must begin with ':'"),
    ("no_colon", b"which:r\n\n", "must begin with ':'"),
    ("short", b":a\n\n", "at least 3 chars"),
    ("no_separator", b":which\n\n", "file separator missing"),
    ("empty_command", b"::r\n\n", "empty fifo command"),
    ("no_reply_name", b":which:\n\n", "no reply fifo name"),
    ("slash", b":which:d/r\n\n", "Forbidden reply fifo filename: d/r"),
    ("dot", b":which:r.fifo\n\n", "Forbidden"),
    ("backslash", b":which:a\\b\n\n", "Forbidden"),
    ("too_long_name", b":which:" + b"k" * 124 + b"\n\n", "too long 129"),
]


@pytest.mark.parametrize("raw, reason", [d[1:] for d in DROPS], ids=[d[0] for d in DROPS])
def test_dropped_first_lines_do_not_eat_the_next_request(raw, reason):
    got = events(raw + b":which:next\n\n")
    assert len(got) == 2 and isinstance(got[0], ProtocolDrop) and reason in got[0].reason
    assert got[1] == req("which", reply="next")


def test_reply_name_length_limit_follows_reply_dir():
    assert check_reply_name("k" * 122, "/tmp/") is None
    assert check_reply_name("k" * 123, "/tmp/") == "Reply fifo filename too long 128"
    assert check_reply_name("k" * 116, "/var/run/k/") is None
    assert check_reply_name("k" * 117, "/var/run/k/") == "Reply fifo filename too long 128"


def test_first_line_limit_is_1023_bytes_with_its_lf():
    ok = b":which:" + b"k" * 10 + b" " * (1023 - 18) + b"\n"
    assert len(ok) == 1023
    assert events(ok + b"\n") == [req("which", reply="k" * 10)]
    too_long = b":" + b"x" * 1022 + b"\n"       # 1023 chars + LF: Kamailio's 1024-byte case
    got = events(too_long + b"\n" + b":which:r\n\n")
    assert isinstance(got[0], ProtocolDrop) and "too long" in got[0].reason
    assert got[1:] == [req("which")]            # Kamailio swallowed this one


def test_first_line_of_2000_chars_split_in_small_chunks():
    raw = b":" + b"x" * 1999 + b"\n\n:which:r\n\n"
    got = events(*[raw[i:i + 7] for i in range(0, len(raw), 7)])
    assert [type(e) for e in got] == [ProtocolDrop, Request]


def test_arg_buffer_limit():
    assert events(b":get_statistics:r\n" + b"a" * 1500 + b"\n\n") == [req("get_statistics", "a" * 1500)]
    got = events(b":get_statistics:r\n" + b"a" * 9000 + b"\n\n:which:r\n\n")
    assert got == [ParseError("get_statistics", "r", "request line too long"), req("which")]
    # the buffer is shared by all arg lines of one request
    many = b"".join(b"b" * 999 + b"\n" for _ in range(9))
    got = events(b":get_statistics:r\n" + many + b"\n")
    assert got == [ParseError("get_statistics", "r", "request line too long")]


def test_no_input_commands_tolerate_long_arg_lines():
    assert events(b":flat_rotate:r\n" + b"a" * 5000 + b"\n\n") == [req("flat_rotate")]


def test_only_a_lone_lf_ends_a_request():
    parser = MIParser(COMMANDS, NO_INPUT)
    assert events(b":debug:r\r\n5\r\n\r\n", parser=parser) == []
    assert parser.pending
    assert events(b"\n", parser=parser) == [req("debug", "5")]
    assert not parser.pending


def test_requests_split_anywhere_and_joined_in_one_write():
    raw = b":which:a\n\n:debug:b\n5\n\n:pwd:c\n\n"
    expected = [req("which", reply="a"), req("debug", "5", reply="b"), req("pwd", reply="c")]
    assert events(raw) == expected
    assert events(*[bytes([c]) for c in raw]) == expected


# The cases where Kamailio swallowed the following request: kamflat answers it.
RESYNC = [
    ("stray_empty_line", b"\n:which:r\n\n", [req("which")]),
    ("stray_whitespace_line", b"  \r\n:which:r\n\n", [req("which")]),
    ("parse_error", b':shv_set:r\nab"cd\n\n:shv_get:r\nsv\n\n',
     [ParseError("shv_set", "r", 'parse error around "'), req("shv_get", "sv")]),
    ("missing_end_line", b":which:a\n:version:b\n\n",
     [ProtocolDrop("request without its end line; the next request began", ":which:a"),
      req("version", reply="b")]),
    ("missing_end_line_in_args", b":debug:a\n5\n:pwd:b\n\n",
     [ProtocolDrop("request without its end line; the next request began", ":debug:a"),
      req("pwd", reply="b")]),
    ("unterminated_quote", b':debug:a\n"abc\n:pwd:b\n\n',
     [ProtocolDrop("request without its end line; the next request began", ":debug:a"),
      req("pwd", reply="b")]),
]


@pytest.mark.parametrize("raw, expected", [r[1:] for r in RESYNC], ids=[r[0] for r in RESYNC])
def test_resync(raw, expected):
    assert events(raw) == expected


def test_half_line_abandoned_when_next_write_starts_a_request():
    got = events(b":debug:a\n5", b":pwd:b\n\n")
    assert got == [ProtocolDrop("request stopped mid-line; the next request began", ":debug:a"),
                   req("pwd", reply="b")]
    got = events(b":deb", b":pwd:b\n\n")
    assert [type(e) for e in got] == [ProtocolDrop, Request]
    # a slow writer whose next chunk does not start a request is simply waited for
    assert events(b":debug:a\n5", b"5\n\n") == [req("debug", "55", reply="a")]


def abandoned(parser, reason="unfinished request abandoned"):
    parser.abandon(reason)
    return list(iter(parser.next_event, NEED_DATA))


def test_abandon_after_idle():
    parser = MIParser(COMMANDS, NO_INPUT)
    assert events(b":get_statistics:r\nrcv_requests\n", parser=parser) == []
    assert abandoned(parser, "idle") == [ProtocolDrop("idle", ":get_statistics:r")]
    assert not parser.pending
    assert events(b":which:r\n\n", parser=parser) == [req("which")]
    assert abandoned(parser) == []
    assert events(b":unknown:r\nx\n", parser=parser) == [UnknownCommand("unknown", "r")]
    assert abandoned(parser) == []       # already answered: nothing more to report


REPLIES = [
    ("ok_empty", (200, "OK", []), b"200 OK\n\n"),
    ("values", (200, "OK", [Node(value="uptime"), Node(value="version")]), b"200 OK\nuptime\nversion\n\n"),
    ("name_value", (200, "OK", [Node("WD", "/")]), b"200 OK\nWD:: /\n\n"),
    ("name_only", (200, "OK", [Node("X")]), b"200 OK\nX:: \n\n"),
    ("attrs_no_value", (200, "OK", [Node("Process", attrs=(("ID", "0"), ("PID", "7"), ("Type", "attendant")))]),
     b"200 OK\nProcess::  ID=0 PID=7 Type=attendant\n\n"),
    ("attrs", (200, "OK", [Node("VAR", "sv", (("type", "string"), ("value", "a b")))]),
     b"200 OK\nVAR:: sv type=string value=a b\n\n"),
    ("nested", (200, "OK", [Node("Entry", "1", children=(Node("k2_n", "7"),)), Node("Entry", "3")]),
     b"200 OK\nEntry:: 1\n\tk2_n:: 7\nEntry:: 3\n\n"),
    ("error", (404, "Statistics Not Found", []), b"404 Statistics Not Found\n\n"),
    ("unescaped_newline", (200, "OK", [Node("Build", "x\n"), Node("GIT", "unknown")]),
     b"200 OK\nBuild:: x\n\nGIT:: unknown\n\n"),
]


@pytest.mark.parametrize("args, expected", [r[1:] for r in REPLIES], ids=[r[0] for r in REPLIES])
def test_encode_reply(args, expected):
    assert encode_reply(*args) == expected


def test_reply_indent_per_depth():
    tree = [Node("a", children=(Node("b", children=(Node("c", "1"),)),))]
    assert encode_reply(200, "OK", tree, indent="  ") == b"200 OK\na:: \n  b:: \n    c:: 1\n\n"


def test_mi_fifo_one_line_errors():
    assert command_not_available("which ") == b"500 command 'which ' not available\n"
    assert command_failed("ps") == b"500 command 'ps' failed\n"
    assert parse_error_reply("shv_set") == b"400 parse error in command 'shv_set'\n"


def test_encode_request_is_what_kamctl_sends():
    assert encode_request("flat_rotate", "openser_receiver_18928") == b":flat_rotate:openser_receiver_18928\n\n"
    assert encode_request("get_statistics", "openser_receiver_19078", ["rcv_requests", "fwd_requests"]) == \
        b":get_statistics:openser_receiver_19078\nrcv_requests\nfwd_requests\n\n"


def test_every_recorded_request_parses_to_one_event():
    cases = json.loads((DATA / "mi_classic_cases.json").read_text())["exchanges"]
    parser = MIParser(COMMANDS, NO_INPUT)
    for case in cases:
        got = events(base64.b64decode(case["request_b64"]), parser=parser)
        assert len(got) == 1, case["id"]
        if case["reply_fifo_opened_and_closed_by_server"]:
            assert isinstance(got[0], (Request, UnknownCommand, ParseError)), case["id"]
        assert not parser.pending


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.sampled_from([1, 3, 64, 4096]))
def test_random_bytes_never_break_the_parser(chunks, split):
    parser = MIParser(COMMANDS, NO_INPUT)
    for chunk in chunks:
        for i in range(0, len(chunk), split):
            parser.receive_data(chunk[i:i + split])
            while parser.next_event() is not NEED_DATA:
                pass
    abandoned(parser)
    # whatever came before, a well-formed request is understood
    assert events(b":which:r\n\n", parser=parser) == [req("which")]
