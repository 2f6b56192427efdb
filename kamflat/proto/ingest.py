"""The ingest wire format, as pure code: JSON lines in, records out; replies out.

A sender writes one JSON object per line:

    {"table": "acc", "values": ["INVITE", "ft", "", "c1@h", 200, "OK", 1795763336]}

with an optional "keys" list (column names; when given it must be as long as
"values"). A value is a string, an integer, a float, null (NULL, written empty),
or one object naming a richer Kamailio type:

    {"datetime": 1795763336}  or  {"datetime": "2026-11-27T12:00:00Z"}   epoch seconds
    {"blob": "<base64>"}                                                  bytes, \\xHH escaped
    {"bigint": 12}  {"bitmap": 5}                                         integers
    {"string": "raw|text"}                                                never %7C-encoded

The server answers on the same connection with one JSON object per line:
`{"line": N, "error": "..."}` for each line it could not take (or, at a stop that
could not write it, "not written: ..."), and, after the sender has shut down its write
side and every accepted record is written (handed to the OS),
`{"done": true, "lines": L, "written": W, "errors": E}`.
"""
import base64
import binascii
import datetime
import json

from kamflat.flatstore import record

# A longer line is refused rather than buffered without end. It also bounds the chunks
# handed to writers (64 KiB of reading plus one unfinished line), which must fit a unix
# socket's send buffer (425,984 bytes with Linux's default net.core.wmem_max).
MAX_LINE = 128 * 1024


class IngestError(ValueError):
    """One line that cannot become a record; the message says what was wrong."""


def _datetime(spec):
    if isinstance(spec, int) and not isinstance(spec, bool):
        return record.Datetime(spec)
    if isinstance(spec, str):
        try:
            moment = datetime.datetime.fromisoformat(spec.replace("Z", "+00:00"))
        except ValueError:
            raise IngestError("datetime %r is not ISO 8601 (e.g. 2026-11-27T12:00:00Z)" % spec)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return record.Datetime(int(moment.timestamp()))
    raise IngestError("datetime must be epoch seconds or an ISO 8601 string, not %r" % (spec,))


def _blob(spec):
    if not isinstance(spec, str):
        raise IngestError("blob must be a base64 string, not %r" % (spec,))
    try:
        return base64.b64decode(spec, validate=True)
    except binascii.Error:
        raise IngestError("blob is not valid base64")


def _integer(kind):
    def convert(spec):
        if not isinstance(spec, int) or isinstance(spec, bool):
            raise IngestError("%s must be an integer, not %r" % (kind, spec))
        return getattr(record, kind.capitalize())(spec)
    return convert


def _string(spec):
    if not isinstance(spec, str):
        raise IngestError("string must be a string, not %r" % (spec,))
    return record.String(spec)


TYPED_VALUES = {
    "datetime": _datetime,
    "blob": _blob,
    "bigint": _integer("bigint"),
    "bitmap": _integer("bitmap"),
    "string": _string,
}


def _value(item, index):
    if item is None or isinstance(item, (str, int, float)):
        return item
    if isinstance(item, dict) and len(item) == 1:
        (kind, spec), = item.items()
        convert = TYPED_VALUES.get(kind)
        if convert is None:
            raise IngestError("value %d: unknown type %r (expected one of %s)"
                              % (index, kind, ", ".join(TYPED_VALUES)))
        try:
            return convert(spec)
        except IngestError as exc:
            raise IngestError("value %d: %s" % (index, exc))
    raise IngestError("value %d: %s is not a string, number, null or {type: value}"
                      % (index, json.dumps(item)[:60]))


def decode_line(line):
    """Turn one line (bytes, without its newline) into (table, keys, values)."""
    if len(line) > MAX_LINE:
        raise IngestError("line longer than %d bytes" % MAX_LINE)
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IngestError("not valid JSON: %s" % exc)
    except RecursionError:     # how deep json can go depends on the Python version
        raise IngestError("not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise IngestError("expected a JSON object like {\"table\": ..., \"values\": [...]}")
    table = obj.get("table")
    if not isinstance(table, str) or not table:
        raise IngestError("\"table\" must be a non-empty string")
    values = obj.get("values")
    if not isinstance(values, list):
        raise IngestError("\"values\" must be a list")
    keys = obj.get("keys")
    if keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise IngestError("\"keys\" must be a list of strings")
        if len(keys) != len(values):
            raise IngestError("%d keys for %d values" % (len(keys), len(values)))
    unknown = set(obj) - {"table", "values", "keys"}
    if unknown:
        raise IngestError("unknown member(s) %s" % ", ".join(sorted(unknown)))
    return table, keys, [_value(v, i) for i, v in enumerate(values)]


# What json.loads runs, without its wrappers (the bytes' encoding guessed, whitespace
# skipped by regex): the same C scanner, configured as json.loads's default decoder.
_scan_once = json.JSONDecoder().scan_once
# The types JSON scalars decode to: _value() passes them through unchanged.
_SCALARS = frozenset((str, int, float, bool, type(None)))
# A text line of at most this many characters is at most MAX_LINE bytes of UTF-8.
_FAST_MAX = MAX_LINE // 4


def decode_text(text):
    """decode_line() for a line given as text (its UTF-8 bytes, decoded strictly): the
    same (table, keys, values), or the same IngestError.

    The usual line, one JSON object holding just "table" and "values", with scalar values
    and nothing around it, is decoded here by json's scanner directly (a writer's hot path);
    any other line takes decode_line, which says what is wrong with it.
    """
    if len(text) <= _FAST_MAX:
        try:
            obj, end = _scan_once(text, 0)
        except (StopIteration, ValueError, RecursionError):
            obj = end = None
        if end == len(text) and obj.__class__ is dict and len(obj) == 2:
            table, values = obj.get("table"), obj.get("values")
            if (table.__class__ is str and table and values.__class__ is list
                    and _SCALARS.issuperset(map(type, values))):
                return table, None, values
    return decode_line(text.encode())


def encode_error(line_no, message):
    return json.dumps({"line": line_no, "error": message}).encode() + b"\n"


def encode_done(lines, written, errors, stopping=False):
    """The last answer: `done`, or `stopping` when the server stopped before the
    sender finished (then `lines` says how many lines were taken)."""
    answer = {"stopping": True} if stopping else {"done": True}
    answer.update(lines=lines, written=written, errors=errors)
    return json.dumps(answer).encode() + b"\n"


def split_lines(buffer):
    """Split off the whole lines of `buffer`: returns (complete_part, rest).

    complete_part ends with b"\\n" (or is empty); rest is the unfinished last line.
    """
    cut = buffer.rfind(b"\n") + 1
    return buffer[:cut], buffer[cut:]
