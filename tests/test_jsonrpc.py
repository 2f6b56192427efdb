"""Pure tests of kamflat.proto.jsonrpc: framing, request validation, reply printing."""
import base64
import json
import re

import pytest

from conftest import DATA
from kamflat.proto import jsonrpc
from kamflat.proto.jsonrpc import NEED_DATA, Document, FifoStream, Invalid, Rejected, Request

CASES = json.loads((DATA / "jsonrpc_fifo_cases.json").read_text())["cases"]


def events(*chunks, stream=None):
    stream = stream or FifoStream()
    out = []
    for chunk in chunks:
        stream.receive_data(chunk)
        while (event := stream.next_event()) is not NEED_DATA:
            out.append(event)
    return out


def summary(evs):
    return [e.data if isinstance(e, Document) else ("rejected", e.reply_name) for e in evs]


FRAMING = [
    # (name, chunks, expected summary)
    ("one line", [b'{"a": 1}\n'], [b'{"a": 1}']),
    ("no newline needed", [b'{"a": 1}'], [b'{"a": 1}']),
    ("two in one write", [b'{"a": 1}\n{"b": 2}\n'], [b'{"a": 1}', b'{"b": 2}']),
    ("glued together", [b'{"a":1}{"b":2}'], [b'{"a":1}', b'{"b":2}']),
    ("multi-line heredoc", [b'{\n  "jsonrpc": "2.0",\n  "id": 1\n}\n'],
     [b'{\n  "jsonrpc": "2.0",\n  "id": 1\n}']),
    ("split across writes", [b'{"a": ', b'"x"', b'}\n'], [b'{"a": "x"}']),
    ("braces in double-quoted string", [b'{"a": "}{}"}\n'], [b'{"a": "}{}"}']),
    ("braces in single-quoted string", [b"{'a': '}'}\n"], [b"{'a': '}'}"]),
    ("escaped quote", [b'{"a": "x\\"}"}\n'], [b'{"a": "x\\"}"}']),
    ("escaped backslash ends the string", [b'{"a": "C:\\\\"}\n{"b": 1}\n'],
     [b'{"a": "C:\\\\"}', b'{"b": 1}']),
    ("escape split across writes", [b'{"a": "x\\', b'"}"}\n'], [b'{"a": "x\\"}"}']),
    ("leading blanks trimmed", [b'\n\n  \t{"a": 1}  \n'], [b'{"a": 1}']),
    ("only a newline", [b"\n"], []),
    ("batch line skipped", [b'[{"reply_name": "r1"}]\n{"b": 1}\n'],
     [("rejected", "r1"), b'{"b": 1}']),
    ("garbage line skipped", [b"hello there\n", b'{"b": 1}\n'], [("rejected", None), b'{"b": 1}']),
    ("unclosed doc, next on new line", [b'{"reply_name": "r2", "id": 15\n{"b": 1}\n'],
     [("rejected", "r2"), b'{"b": 1}']),
]


GOOD = b'{"jsonrpc": "2.0", "method": "core.version", "reply_name": "good", "id": 9}\n'
# Resynchronisation (kamflat.proto.jsonstream's rules): whatever comes first, the good
# request that follows is a Document of its own. (name, chunks before GOOD, rejected)
RESYNC = [
    ("rule 1: cut after a value, same write", [b'{"reply_name": "dead", "id": 3'], ["dead"]),
    ("rule 1: cut after a key, same write", [b'{"jsonrpc"'], [None]),
    ("rule 1: a megabyte of {", [b"{" * (1 << 20)], [None]),
    ("rule 2: cut inside a string, same write", [b'{"jsonrpc": "2.0", "meth'], [None]),
    ("rule 2: cut after a backslash", [b'{"reply_name": "dead", "x": "a\\'], ["dead"]),
    ("rule 4: cut where a value starts, next write", [b'{"reply_name": "dead", "params": ['],
     ["dead"]),
    ("rule 4: cut inside a '...' string, next write", [b"{'jsonrpc"], [None]),
    ("rule 5: trailing comma", [b'{"reply_name": "dead", "id": 16,}'], ["dead"]),
    ("rule 5: closers", [b"}}}]]]"], [None]),
    ("rule 6: oversize, cut", [b'{"a": "' + b"y" * 100000], [None]),
    ("garbage without newline", [b"hello world"], [None]),
    ("64 KiB of zeros", [b"\0" * 65536], [None]),
    ("a batch, cut", [b'[{"jsonrpc": "2.0", "reply_name": "dead"'], ["dead"]),
]


@pytest.mark.parametrize("name,chunks,rejected", RESYNC, ids=[r[0] for r in RESYNC])
def test_resync_garbage_never_reaches_the_next_request(name, chunks, rejected):
    evs = events(*chunks, GOOD)
    assert evs[-1] == Document(GOOD.strip())
    assert [(e.reply_name if isinstance(e, Rejected) else e) for e in evs[:-1]] == rejected


@pytest.mark.parametrize("seed", range(20))
def test_resync_after_random_bytes(seed):
    import random
    garbage = random.Random(seed).randbytes(65536)
    assert events(garbage, GOOD)[-1] == Document(GOOD.strip())


def test_a_megabyte_of_braces_is_one_event_and_linear():
    stream = FifoStream()
    for _ in range(16):
        stream.receive_data(b"{" * 65536)
        assert stream.next_event() is NEED_DATA
    assert len(stream._buf) < 2
    assert len(events(GOOD, stream=stream)) == 2


@pytest.mark.parametrize("name,chunks,expected", FRAMING, ids=[f[0] for f in FRAMING])
def test_framing(name, chunks, expected):
    assert summary(events(*chunks)) == expected


def test_framing_byte_by_byte_is_the_same():
    """Any split gives the same documents, except a write that begins with `{` where a
    value may start (rule 4: a new client): so no piece here begins with a `{` or blanks."""
    data = b'{"a": "}\\"{"}\n[x]\n{"b": {"c": "\\\\"}}\n'
    whole = summary(events(data))
    pieces = re.findall(rb"[^{\s][\s{]*|[\s{]+", data)
    assert b"".join(pieces) == data and len(pieces) > len(data) // 2
    assert summary(events(*pieces)) == whole
    assert whole == [b'{"a": "}\\"{"}', ("rejected", None), b'{"b": {"c": "\\\\"}}']


def doc_of_size(n):
    """A core.echo document of exactly n bytes."""
    head = b'{"jsonrpc": "2.0", "method": "core.echo", "params": ["'
    tail = b'"], "reply_name": "r", "id": 1}'
    return head + b"X" * (n - len(head) - len(tail)) + tail


def test_limit_counts_the_leftover_newline():
    # 8189 bytes after one leftover newline is 8190: accepted (observed in 5.6)
    stream = FifoStream()
    evs = events(b"\n" + doc_of_size(8189), stream=stream)
    assert [type(e) for e in evs] == [Document] and len(evs[0].data) == 8189
    # 8190 after a leftover newline is 8191: too large
    evs = events(b"\n" + doc_of_size(8190))
    assert len(evs) == 1 and isinstance(evs[0], Rejected)
    assert "8191 bytes" in evs[0].reason


def test_oversize_is_skipped_and_the_next_request_answered():
    big = (b'{"jsonrpc": "2.0", "method": "core.echo", "params": ["' + b"y" * 70000
           + b'"], "reply_name": "kam56_c", "id": 7}\n')
    nxt = b'{"jsonrpc": "2.0", "method": "core.version", "reply_name": "p", "id": 9}\n'
    data = big + nxt
    evs = events(*[data[i:i + 4096] for i in range(0, len(data), 4096)])
    assert isinstance(evs[0], Rejected)
    assert (evs[0].reply_name, evs[0].id, evs[0].has_id) == ("kam56_c", 7, True)
    assert "too large" in evs[0].reason
    assert evs[1:] == [Document(nxt.strip())]


def test_oversize_memory_is_bounded():
    stream = FifoStream()
    stream.receive_data(b'{"a": "')
    for _ in range(100):
        stream.receive_data(b"z" * 10000)
        assert stream.next_event() is NEED_DATA
        assert len(stream._buf) < 20000
    assert stream.pending


def test_abandon_unterminated_document():
    stream = FifoStream()
    events(b'{"jsonrpc": "2.0", "reply_name": "late", "id": "abc"', stream=stream)
    assert stream.pending
    stream.abandon()
    rejected = stream.next_event()
    assert (rejected.reply_name, rejected.id) == ("late", "abc")
    stream.abandon()
    assert not stream.pending and stream.next_event() is NEED_DATA
    assert summary(events(b'{"ok": 1}', stream=stream)) == [b'{"ok": 1}']


REQUESTS = [
    # (document, expected Request fields or the Invalid reason's start)
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": 1}',
     Request("m", [], "r", 1, True)),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": "s1"}',
     Request("m", [], "r", "s1", True)),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r"}', Request("m", [], "r", None, False)),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": null}',
     Request("m", [], "r", 0, True)),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": 1.5}',
     Request("m", [], "r", 1.5, True)),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": -7}',
     Request("m", [], "r", -7, True)),
    (b'{"jsonrpc": "2.0", "method": "m", "params": {"b": 2, "a": "x"}, "reply_name": "r"}',
     Request("m", [2, "x"], "r", None, False)),
    (b'{"jsonrpc": "2.0", "reply_name": "r", "id": 7}', Request(None, [], "r", 7, True)),
    (b'{"JSONRPC": "2.0", "Method": "m", "reply_name": "r", "method": "other"}',
     Request("m", [], "r", None, False)),
    (b'{"method": "m", "reply_name": "r", "id": 8}', "missing jsonrpc"),
    (b'{"jsonrpc": "1.0", "method": "m", "reply_name": "r"}', "unsupported jsonrpc version"),
    (b'{"jsonrpc": "2.0", "method": "m", "id": 1}', "missing reply_name"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "", "id": 1}', "missing reply_name"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "a/b"}', "Forbidden reply fifo"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "a.b"}', "Forbidden reply fifo"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "a\\\\b"}', "Forbidden reply fifo"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "' + b"r" * 123 + b'"}',
     "Reply fifo filename too long 128"),
    (b'{"jsonrpc": "2.0", "method": "m", "reply_name": "r", "id": 16,}', "invalid JSON"),
]


@pytest.mark.parametrize("doc,expected", REQUESTS)
def test_parse_request(doc, expected):
    got = jsonrpc.parse_request(doc)
    if isinstance(expected, Request):
        assert got == expected
    else:
        assert isinstance(got, Invalid) and got.reason.startswith(expected)


def test_reply_name_of_122_chars_is_allowed():
    doc = b'{"jsonrpc": "2.0", "method": "m", "reply_name": "' + b"r" * 122 + b'"}'
    assert isinstance(jsonrpc.parse_request(doc), Request)


def test_invalid_json_keeps_a_reply_target():
    got = jsonrpc.parse_request(b'{"jsonrpc": "2.0", "reply_name": "kam56_c", "id": 16,}')
    assert (got.reply_name, got.id, got.has_id, got.error) == ("kam56_c", 16, True, (-32700, None))


@pytest.mark.parametrize("case", [c for c in CASES if "reply_b64" in c], ids=lambda c: c["name"])
def test_encoder_reproduces_recorded_replies(case):
    """Decode every recorded reply and print it again: the bytes must be identical."""
    recorded = base64.b64decode(case["reply_b64"])
    replies = recorded.replace(b"}{", b"}\x00{").split(b"\x00")
    for raw in replies:
        obj = json.loads(raw)
        ident = dict(id=obj["id"], has_id=True) if "id" in obj else {}
        if "error" in obj:
            again = jsonrpc.encode_reply(error=obj["error"], **ident)
        else:
            again = jsonrpc.encode_reply(result=obj["result"], **ident)
        assert again == raw


NUMBERS = [(0, "0"), (-7, "-7"), (1.5, "1.500000"), (2 ** 31 - 1, "2147483647"),
           (2 ** 31, "2147483648"), (67108864, "67108864"), (5e9, "5000000000"),
           (1.5e10, "15000000000"), (1.25e10 + 0.5, "1.250000e+10"),
           (1e-7, "1.000000e-07"), (0.25, "0.250000"), (-2.5, "-2.500000")]


@pytest.mark.parametrize("value,text", NUMBERS)
def test_number_printing(value, text):
    assert jsonrpc.number(value) == text


def test_pretty_nesting_and_escapes():
    value = {"a": [], "b": {}, "c": [{"x": 1}], "d": "q\"\\\n\t\x01ü"}
    assert jsonrpc.pretty(value) == (
        '{\n\t"a":\t[],\n\t"b":\t{\n\t},\n\t"c":\t[{\n\t\t\t"x":\t1\n\t\t}],\n'
        '\t"d":\t"q\\"\\\\\\n\\t\\u0001ü"\n}')


def test_error_object_uses_table_text_for_table_codes():
    assert jsonrpc.error_object(-32601, "whatever") == {"code": -32601,
                                                       "message": "Method Not Found"}
    assert jsonrpc.error_object(500, "Method Not Found") == {"code": 500,
                                                            "message": "Method Not Found"}
    assert jsonrpc.error_object(500, None)["message"] == "Unexpected Error"


def test_pretty_format_0_is_compact():
    """modparam("jsonrpcs", "pretty_format", 0), bytes as a live Kamailio 5.6.3 sent them."""
    from kamflat.mgmt.rpc_commands import Struct
    assert jsonrpc.encode_reply(result={}, id=4438, has_id=True, formatted=False) == \
        b'{"jsonrpc":"2.0","result":{},"id":4438}'
    assert jsonrpc.encode_reply(error=jsonrpc.error_object(500, "Method Not Found"), id=4395,
                                has_id=True, formatted=False) == \
        b'{"jsonrpc":"2.0","error":{"code":500,"message":"Method Not Found"},"id":4395}'
    items = Struct([("shv", {"name": "two", "type": "string", "value": "abc"}),
                    ("shv", {"name": "one", "type": "int", "value": 1})])
    assert jsonrpc.encode_reply(result={"items": items}, id=4309, has_id=True,
                                formatted=False) == (
        b'{"jsonrpc":"2.0","result":{"items":{"shv":{"name":"two","type":"string",'
        b'"value":"abc"},"shv":{"name":"one","type":"int","value":1}}},"id":4309}')
    assert jsonrpc.encode_reply(result=["a", "1"], formatted=False) == \
        b'{"jsonrpc":"2.0","result":["a","1"]}'


def test_process_names_are_kamailio_56s_over_rpc_and_33s_over_mi():
    from kamflat.mgmt.manage import Management, Process
    from kamflat.mgmt.mi_commands import MICommands
    from kamflat.mgmt.rpc_commands import Params, RpcCommands
    m = Management.standalone()
    m._processes = lambda: [Process(0, 10, 0, "attendant"), Process(1, 11, 1, "MI FIFO")]
    rpc = RpcCommands(m)

    def call(name):
        return rpc.call(rpc.lookup(name), Params([])).values
    assert call("core.psx") == [{"IDX": 0, "PID": 10, "DSC": "main process - attendant"},
                                {"IDX": 1, "PID": 11, "DSC": "MI FIFO"}]
    assert call("core.ps") == [10, "main process - attendant", 11, "MI FIFO"]
    assert [p["description"] for p in call("core.psa")] == ["main process - attendant",
                                                           "MI FIFO"]
    mi_ps = MICommands(["kex"], m).run("ps")
    assert [dict(node.attrs)["Type"] for node in mi_ps.nodes] == ["attendant", "MI FIFO"]


def test_fast_path_gives_what_the_grammar_scan_gives(monkeypatch):
    """Whole valid documents take C's decoder; everything must come out as the grammar
    scan alone gives it (every recorded request, the framing and resync tables)."""
    streams = [[base64.b64decode(c["request_b64"])] for c in CASES]
    streams += [chunks for _name, chunks, _ in FRAMING]
    streams += [chunks + [GOOD] for _name, chunks, _ in RESYNC]
    streams.append([b'{"a": [\n{"b": 1}]}\n{"c": "\\u00fc"}\n{"d": "\xc3\xbc"}\n' + GOOD])
    fast = [events(*chunks) for chunks in streams]
    monkeypatch.setattr(FifoStream, "_whole_document", lambda self: False)
    assert [events(*chunks) for chunks in streams] == fast
