"""JSON-RPC over a FIFO as Kamailio 5.6's jsonrpcs module speaks it (pure: no IO).

Three parts, h11 style:

* `FifoStream` cuts the server FIFO's byte stream into documents. Kamailio reads one
  byte at a time and ends a document where the `{`/`}` depth returns to 0 (braces inside
  "..." or '...' strings do not count); there is no newline framing, several documents
  may arrive in one write and one document may span several lines. Whitespace left
  over from the previous document (usually its trailing newline) belongs to the next
  one and counts towards the 8190-byte limit, then is trimmed.
* `parse_request` validates one document the way jsonrpcs does.
* `encode_reply` prints a reply byte for byte like Kamailio's srjson pretty printer
  (tab indentation, `:<TAB>` after keys, no trailing newline, cJSON number printing).

Resynchronisation (where kamflat deliberately differs from Kamailio, which swallows
the requests that follow any of these):

1. Garbage before a document (any non-blank byte other than `{`, e.g. a batch `[`)
   makes the rest of that line garbage: it is skipped up to and including the next
   newline and reported as one `Rejected`.
2. An oversize document (more than 8190 bytes, leftover blanks included) is reported
   as `Rejected`; its remaining bytes are still scanned (but not kept) until its braces
   balance, so the next document starts where the client meant it to. Only a bounded
   head and tail are kept, to recover its `reply_name` and `id` for an error reply.
3. A `{` right after a newline, while a document is still open, starts a new document:
   the open one is reported as unterminated. (A client's next request always starts
   on a new line; a nested object at column 0 of a multi-line document is the one
   valid input this misreads.)
4. A document that stays open with no new bytes is abandoned by the IO layer calling
   `abandon()` after its idle timeout.
5. Backslash escapes inside strings are honoured properly, so `"C:\\\\"` ends a string
   (Kamailio only looks at the byte before the quote and loses the stream there).
"""
import json
import math
import re
from dataclasses import dataclass

# jsonrpcs took its reply FIFO name rules (forbidden characters, length) from mi_fifo
from kamflat.proto.mi import check_reply_name
from kamflat.proto.sansio import NEED_DATA

MAX_DOCUMENT = 8190        # bytes per document, leftover leading blanks included
KEEP_BYTES = 512           # head/tail of a skipped document kept for reply_name/id
BLANKS = b" \t\r\n"


@dataclass(frozen=True)
class Document:
    """One complete JSON document, leading and trailing blanks trimmed."""

    data: bytes


@dataclass(frozen=True)
class Rejected:
    """Bytes that could not be a request. `reason` says why; `reply_name` and `id`
    are what could be recovered from them for an error reply (None if nothing)."""

    reason: str
    head: bytes
    reply_name: str | None = None
    id: object = None
    has_id: bool = False


_REPLY_NAME_RE = re.compile(rb'"reply_name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ID_RE = re.compile(rb'"id"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"(?:[^"\\]|\\.)*")')
_SPECIAL = re.compile(rb'[{}"\'\\\n]')


def recover_reply_target(raw):
    """(reply_name, id, has_id) found by pattern in bytes that are not valid JSON."""
    name = None
    m = _REPLY_NAME_RE.search(raw)
    if m:
        try:
            name = json.loads(b'"' + m.group(1) + b'"')
        except ValueError:
            name = None
    m = _ID_RE.search(raw)
    if not m:
        return name, None, False
    try:
        return name, json.loads(m.group(1)), True
    except ValueError:
        return name, None, False


class FifoStream:
    """Splits the server FIFO's byte stream into `Document`s and `Rejected` chunks.

    Feed bytes with `receive_data`, then call `next_event` until it returns NEED_DATA.
    """

    def __init__(self, max_document=MAX_DOCUMENT):
        self.max_document = max_document
        self._buf = bytearray()
        self._pos = 0            # next byte to scan
        self._reset_document()

    def _reset_document(self):
        self._depth = 0
        self._quote = None       # b'"' or b"'" while inside a string
        self._escaped = False
        self._mode = "idle"      # idle | doc | garbage | oversize
        self._head = b""
        self._tail = b""
        self._skipped = 0        # bytes of an oversize/garbage chunk already dropped

    @property
    def pending(self):
        """True while an unfinished document (or garbage line) is buffered."""
        return self._mode != "idle"

    def receive_data(self, data):
        self._buf += data

    def abandon(self):
        """Give up on the unfinished document (the IO layer's idle timeout).

        Returns the `Rejected` for it, or None if nothing was pending.
        """
        if not self.pending:
            return None
        if self._mode != "doc":
            self._keep(bytes(self._buf[:self._pos]))
        raw = bytes(self._buf[:self._pos]) if self._mode == "doc" else None
        event = self._rejected("unterminated document abandoned after idle timeout", raw)
        self._drop(self._pos)
        self._reset_document()
        return event

    def _keep(self, chunk):
        """Remember the start and the end of bytes that are being skipped."""
        if len(self._head) < KEEP_BYTES:
            self._head += chunk[:KEEP_BYTES - len(self._head)]
        self._tail = (self._tail + chunk)[-KEEP_BYTES:]
        self._skipped += len(chunk)

    def _drop(self, upto):
        """Forget the scanned bytes before `upto` (they were used or skipped)."""
        del self._buf[:upto]
        self._pos = max(self._pos - upto, 0)

    def _rejected(self, reason, raw=None):
        if raw is None:
            raw = self._head + self._tail
        name, ident, has_id = recover_reply_target(raw)
        head = (self._head or bytes(raw))[:80]
        return Rejected(reason, head, name, ident, has_id)

    def next_event(self):
        """Return the next Document or Rejected, or NEED_DATA."""
        buf = self._buf
        while self._pos < len(buf):
            if self._mode == "idle":
                event = self._scan_idle()
            elif self._mode == "garbage":
                event = self._scan_garbage()
            else:
                event = self._scan_document()
            if event is not None:
                return event
        return NEED_DATA

    def _scan_idle(self):
        buf = self._buf
        while self._pos < len(buf) and buf[self._pos] in BLANKS:
            self._pos += 1
        if self._pos > self.max_document:
            # Only blanks so far: harmless, forget them rather than reject anything.
            self._drop(self._pos)
        if self._pos >= len(buf):
            return None
        if buf[self._pos] == 0x7B:   # {
            self._mode = "doc"
            self._depth = 1
            self._pos += 1
            return None
        self._mode = "garbage"
        self._drop(self._pos)
        return None

    def _scan_garbage(self):
        buf = self._buf
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            self._keep(bytes(buf))
            self._drop(len(buf))
            return None
        self._keep(bytes(buf[:nl]))
        event = self._rejected("not a JSON object: garbage before '{' skipped to end of line")
        self._drop(nl + 1)
        self._reset_document()
        return event

    def _scan_document(self):
        buf = self._buf
        while True:
            if self._mode == "oversize" and self._pos > 65536:
                self._trim_oversize()
            if self._escaped:
                # the byte after a backslash inside a string is taken as it is
                if self._pos >= len(buf):
                    return None
                self._escaped = False
                self._pos += 1
                continue
            m = _SPECIAL.search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                self._check_length()
                self._trim_oversize()
                return None
            i = m.start()
            c = buf[i]
            if c == 0x7B and i > 0 and buf[i - 1] == 0x0A:
                # rule 3: a new document starts on this line; the open one is dead
                event = self._unterminated(i)
                self._mode = "doc"
                self._depth = 1
                return event
            self._pos = i + 1
            self._check_length()
            if self._quote is not None:
                if c == 0x5C:
                    self._escaped = True
                elif c == self._quote[0]:
                    self._quote = None
                continue
            if c in (0x22, 0x27):
                self._quote = bytes((c,))
            elif c == 0x7B:
                self._depth += 1
            elif c == 0x7D:
                self._depth -= 1
                if self._depth == 0:
                    return self._finish(self._pos)

    def _check_length(self):
        if self._mode == "doc" and self._skipped + self._pos > self.max_document:
            self._mode = "oversize"

    def _trim_oversize(self):
        # keep the last scanned byte: rule 3 looks one byte back
        upto = self._pos - 1
        if self._mode == "oversize" and upto > KEEP_BYTES:
            self._keep(bytes(self._buf[:upto]))
            self._drop(upto)

    def _finish(self, end):
        if self._mode == "oversize":
            self._keep(bytes(self._buf[:end]))
            event = self._rejected("document too large (%d bytes, limit %d)"
                                   % (self._skipped, self.max_document))
        else:
            event = Document(bytes(self._buf[:end]).strip(BLANKS))
        self._drop(end)
        self._reset_document()
        return event

    def _unterminated(self, start_of_next):
        if self._mode == "oversize":
            self._keep(bytes(self._buf[:start_of_next]))
            event = self._rejected("unterminated document (too large, %d bytes)"
                                   % self._skipped)
        else:
            raw = bytes(self._buf[:start_of_next])
            event = self._rejected("unterminated document (a new one starts on the next line)",
                                   raw)
        self._drop(start_of_next)
        self._reset_document()
        self._pos = 1
        return event


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class Request:
    """A valid request. `method` is None when the document had none (Kamailio then
    answers an empty success result)."""

    method: str | None
    params: list
    reply_name: str
    id: object = None
    has_id: bool = False


@dataclass(frozen=True)
class Invalid:
    """A document that gets no normal answer. `reply_name`/`id` are set when an
    error reply can still be sent (kamflat's choice for unparsable JSON); `error`
    is then the (code, message) to send."""

    reason: str
    reply_name: str | None = None
    id: object = None
    has_id: bool = False
    error: tuple | None = None


def _lookup(pairs, key):
    """srjson's object lookup: first member whose name matches case-insensitively."""
    key = key.lower()
    for name, value in pairs:
        if name.lower() == key:
            return True, value
    return False, None


def _pairs_to_values(value):
    """Turn the object_pairs_hook lists back into plain values (first key wins)."""
    if isinstance(value, _Pairs):
        out = {}
        for k, v in value:
            out.setdefault(k, _pairs_to_values(v))
        return out
    if isinstance(value, list):
        return [_pairs_to_values(v) for v in value]
    return value


class _Pairs(list):
    pass


def parse_request(data, reply_dir="/tmp/"):
    """Validate one document as jsonrpcs does. Returns Request or Invalid."""
    try:
        # strict=False: srjson takes raw control characters inside strings
        root = json.loads(data, object_pairs_hook=_Pairs, strict=False)
    except (ValueError, RecursionError) as exc:
        name, ident, has_id = recover_reply_target(data)
        return Invalid("invalid JSON document: %s" % exc, name, ident, has_id,
                       (-32700, None))
    if not isinstance(root, _Pairs):
        return Invalid("JSON document is not an object")
    found, version = _lookup(root, "jsonrpc")
    if not found:
        return Invalid("missing jsonrpc field in request")
    if version != "2.0":
        return Invalid("unsupported jsonrpc version %s" % json.dumps(_pairs_to_values(version)))
    found, reply_name = _lookup(root, "reply_name")
    if not found or not isinstance(reply_name, str) or not reply_name:
        return Invalid("missing reply_name in request (nowhere to send the reply)")
    problem = check_reply_name(reply_name, reply_dir)
    if problem:
        return Invalid(problem)
    has_id, ident = _lookup(root, "id")
    ident = _pairs_to_values(ident)
    found, method = _lookup(root, "method")
    if not isinstance(method, str):
        method = None
    found, params = _lookup(root, "params")
    if isinstance(params, _Pairs):
        params = [v for _k, v in params]       # names ignored, values in order
    elif not isinstance(params, list):
        params = []
    return Request(method, [_pairs_to_values(p) for p in params], reply_name,
                   reply_id(ident) if has_id else None, has_id)


def reply_id(ident):
    """The id echoed in the reply: strings as they are, anything else as srjson's
    number value (null and false -> 0, true -> 1, objects/arrays -> 0)."""
    if isinstance(ident, str):
        return ident
    if isinstance(ident, bool):
        return int(ident)
    if isinstance(ident, (int, float)):
        return ident
    return 0


# ---------------------------------------------------------------- replies

ERROR_MESSAGES = {
    -32700: "Parse Error",
    -32600: "Invalid Request",
    -32601: "Method Not Found",
    -32602: "Invalid Parameters",
    -32603: "Internal Error",
    -32000: "Execution Error",
}


def error_object(code, message):
    """Kamailio's error member: table codes get the table's text, others their own."""
    return {"code": code, "message": ERROR_MESSAGES.get(code, message or "Unexpected Error")}


def encode_reply(result=None, error=None, id=None, has_id=False, formatted=True):
    """The reply document exactly as jsonrpcs prints it (bytes, no trailing newline).

    Give either `result` (any JSON value) or `error` (a dict from `error_object`).
    `formatted=False` is jsonrpcs' `pretty_format 0` (srjson_PrintUnformatted).
    """
    reply = {"jsonrpc": "2.0"}
    if error is not None:
        reply["error"] = error
    else:
        reply["result"] = {} if result is None else result
    if has_id:
        reply["id"] = id
    return (pretty(reply) if formatted else compact(reply)).encode("utf-8")


def pretty(value, depth=0):
    """srjson_Print: cJSON's formatted output."""
    if isinstance(value, dict) or is_struct(value):
        depth += 1
        members = value.items() if isinstance(value, dict) else value
        if not value:
            return "{\n" + "\t" * (depth - 1) + "}"
        inner = ",\n".join("\t" * depth + _string(str(k)) + ":\t" + pretty(v, depth)
                           for k, v in members)
        return "{\n" + inner + "\n" + "\t" * (depth - 1) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(pretty(v, depth + 1) for v in value) + "]"
    return _scalar(value)


def compact(value):
    """srjson_PrintUnformatted: no blanks at all."""
    if isinstance(value, dict) or is_struct(value):
        members = value.items() if isinstance(value, dict) else value
        return "{" + ",".join(_string(str(k)) + ":" + compact(v) for k, v in members) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value):
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return number(value)


def is_struct(value):
    """A struct given as (name, value) pairs, which may repeat a name (rpc_commands.Struct)."""
    return getattr(value, "struct_pairs", False)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _string(s):
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), "\\u%04x" % ord(m.group())),
                                   s) + '"'


INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1


def number(value):
    """cJSON print_number: C int range as %d, whole doubles %.0f, else %e or %f."""
    d = float(value)
    if math.isnan(d) or math.isinf(d):
        return "%f" % d          # what printf gives; not valid JSON, as in Kamailio
    if INT_MIN <= d <= INT_MAX and abs(int(d) - d) <= 2.220446049250313e-16:
        return "%d" % int(d)
    if abs(math.floor(d) - d) <= 2.220446049250313e-16:
        return "%.0f" % d
    if abs(d) < 1.0e-6 or abs(d) > 1.0e9:
        return "%e" % d
    return "%f" % d
