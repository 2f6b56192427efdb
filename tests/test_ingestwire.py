"""The ingest wire format: JSON lines to records, table-driven."""
import pytest

from kamflat.flatstore import record
from kamflat.proto.ingest import (IngestError, decode_line, decode_text, encode_done, encode_error,
                                  split_lines)

GOOD = [
    (b'{"table": "acc", "values": ["INVITE", 200, 1.5, null]}',
     ("acc", None, ["INVITE", 200, 1.5, None])),
    (b'{"table": "acc", "keys": ["method", "code"], "values": ["BYE", 200]}',
     ("acc", ["method", "code"], ["BYE", 200])),
    (b'{"table": "missed_calls", "values": []}', ("missed_calls", None, [])),
    (b'{"table": "acc", "values": ["a|b", "\\u00e4\\r\\n"]}', ("acc", None, ["a|b", "\u00e4\r\n"])),
]


@pytest.mark.parametrize("line, expected", GOOD)
def test_good_lines(line, expected):
    assert decode_line(line) == expected


def test_typed_values_become_km_types():
    _, _, values = decode_line(
        b'{"table": "acc", "values": [{"datetime": 1795763336},'
        b' {"datetime": "2026-11-27T07:08:56Z"}, {"blob": "AAF8"}, {"bigint": 12},'
        b' {"bitmap": 5}, {"string": "raw|text"}]}')
    assert values == [1795763336, 1795763336, b"\x00\x01|", 12, 5, "raw|text"]
    kinds = [record.Datetime, record.Datetime, bytes, record.Bigint, record.Bitmap, record.String]
    assert [type(v) for v in values] == kinds
    assert record.encode_record(values) == b"1795763336|1795763336|\\x00\\x01\\x7C|12|5|raw|text\n"


BAD = [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"values": []}', '"table" must be a non-empty string'),
    (b'{"table": "", "values": []}', '"table" must be a non-empty string'),
    (b'{"table": "acc"}', '"values" must be a list'),
    (b'{"table": "acc", "values": "x"}', '"values" must be a list'),
    (b'{"table": "acc", "values": [1], "keys": ["a", "b"]}', "2 keys for 1 values"),
    (b'{"table": "acc", "values": [1], "keys": [1]}', '"keys" must be a list of strings'),
    (b'{"table": "acc", "values": [], "tabel": 1}', "unknown member(s) tabel"),
    (b'{"table": "acc", "values": [[1]]}', "value 0: [1] is not a string, number, null"),
    (b'{"table": "acc", "values": [1, {"date": 1}]}', "value 1: unknown type 'date'"),
    (b'{"table": "acc", "values": [{"datetime": "tomorrow"}]}', "value 0: datetime 'tomorrow'"),
    (b'{"table": "acc", "values": [{"blob": "!!"}]}', "value 0: blob is not valid base64"),
    (b'{"table": "acc", "values": [{"bigint": "1"}]}', "value 0: bigint must be an integer"),
    (b'\xff\xfe', "not valid JSON"),
    (b'{"table": "acc", "values": [%s]}' % (b"[" * 50000 + b"]" * 50000), "not valid JSON: nested too deeply"),
]


@pytest.mark.parametrize("line, message", BAD)
def test_bad_lines_say_what_is_wrong(line, message):
    with pytest.raises(IngestError) as exc:
        decode_line(line)
    assert message in str(exc.value)


TEXT_ONLY = [    # lines decode_text hands to decode_line: whitespace, BOMs, long lines
    b' {"table": "acc", "values": []}', b'{"table": "acc", "values": []}\r',
    b'\xef\xbb\xbf{"table": "acc", "values": [1]}',
    b'{"table": "acc", "values": [1], "table": "b"}', b'"acc"', b'',
    b'{"table": "acc", "values": ["%s"]}' % (b"x" * 70000),
    b'{"table": "acc", "values": [' + b"[" * 50000 + b"]" * 50000 + b']}',
]


@pytest.mark.parametrize("line", [line for line, _ in GOOD + BAD if line != b"\xff\xfe"]
                         + [b'{"table": "acc", "values": [{"datetime": 1}, true, -0.5]}']
                         + TEXT_ONLY)
def test_decode_text_is_decode_line(line):
    """The writer's fast path: the same records and the same errors for the same line."""
    def outcome(decode, arg):
        try:
            table, keys, values = decode(arg)
        except IngestError as exc:
            return type(exc), str(exc)
        return table, keys, [(type(v), v) for v in values]
    assert outcome(decode_text, line.decode()) == outcome(decode_line, line)


def test_answers_and_line_splitting():
    assert encode_error(7, "bad") == b'{"line": 7, "error": "bad"}\n'
    assert encode_done(3, 2, 1) == b'{"done": true, "lines": 3, "written": 2, "errors": 1}\n'
    assert encode_done(3, 3, 0, stopping=True).startswith(b'{"stopping": true, "lines": 3')
    assert split_lines(b"a\nb\nc") == (b"a\nb\n", b"c")
    assert split_lines(b"abc") == (b"", b"abc")
    assert split_lines(b"a\n") == (b"a\n", b"")
