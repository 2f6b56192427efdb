"""Cutting the JSON-RPC FIFO's byte stream into documents (pure: no IO, no clock).

Every client of the jsonrpcs FIFO writes into one stream, with no framing of its own.
Kamailio ends a document where the `{`/`}` depth returns to 0 (braces inside strings
do not count): no newline is needed, several documents may come in one write and one
document may span lines. Whitespace left over from the previous document (usually its
trailing newline) belongs to the next one and counts towards the 8190-byte limit.
`FifoStream` keeps all of that, and adds what Kamailio lacks: no client's garbage ever
reaches the next client's request.

Resynchronisation: what ends an abandoned document. The stream is read with the JSON
grammar (strings in `"..."` or `'...'`, escapes honoured), so it knows at every byte
what may come next. A document that cannot become a request ends, as a `Rejected`
event, at the first of:

1. A `{` where the grammar allows no value (after `{`, after a key, after a value):
   the next request starts at that `{`. This ends a document cut anywhere outside a
   string, e.g. `{"id": 3` directly followed by the next client's `{"jsonrpc"...`.
2. A string that ends in `{` (and blanks) followed by a grammar error: the document
   was cut inside a string and the next request starts at that `{` (its first `"`
   closed the string).
3. A `{` at the start of a line while a document is open: the next request (clients
   end theirs with a newline, and pretty printers indent nested objects).
4. A `{` starting a new write (a `receive_data` chunk) where the open document waits
   for a value, or is inside a '...' string (never valid JSON, so nothing valid is
   lost): the previous writer stopped mid-document. Kamailio's clients write a
   request with one write(); a document over PIPE_BUF (4096 bytes) written in pieces,
   one of which begins with a nested object, is the one valid input this misreads.
5. Any other grammar error: the document is rejected there (an invalid-JSON error,
   -32700) and the rest of its line is dropped quietly.
6. More than 8190 bytes: rejected as too large, but scanned on (not kept) until its
   braces balance, so what follows starts where its client meant it to.
7. Idle: the IO layer calls `abandon()` when the stream has been quiet for its idle
   timeout with a document unfinished.

Garbage outside documents (anything but blanks where a document may start) is skipped
up to the next `{`, or to the end of its line; a batch (`[...]`) is rejected whole.
Runs of garbage with nothing to reply to (no `reply_name` in them) are reported as one
`Rejected` each, however many bytes: a megabyte of `{` is one event, not a million.
A rejected document's `reply_name` and `id` are recovered where they can be, so its
client gets an error reply instead of waiting for its timeout.
"""
import json
import re
from dataclasses import dataclass

from kamflat.proto.sansio import NEED_DATA

MAX_DOCUMENT = 8190        # bytes per document, leftover leading blanks included
KEEP_BYTES = 512           # head/tail of a skipped document kept for reply_name/id
BLANKS = b" \t\r\n"
PARSE_ERROR, INVALID_REQUEST = -32700, -32600


@dataclass(frozen=True)
class Document:
    """One complete JSON document, leading and trailing blanks trimmed."""

    data: bytes


@dataclass(frozen=True)
class Rejected:
    """Bytes that could not be a request. `reason` says why; `reply_name` and `id`
    are what could be recovered from them for an error reply (None if nothing);
    `code` is the JSON-RPC error code for that reply."""

    reason: str
    head: bytes
    reply_name: str | None = None
    id: object = None
    has_id: bool = False
    code: int = INVALID_REQUEST


_REPLY_NAME_RE = re.compile(rb'"reply_name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ID_RE = re.compile(rb'"id"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"(?:[^"\\]|\\.)*")')


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


# What the grammar expects next inside a document.
VALUE, VALUE_OR_END, KEY, KEY_OR_END, COLON, COMMA_OR_END = (
    "value", "value or end", "key", "key or end", "colon", "comma or end")
IDLE, DOC, SKIP = "idle", "doc", "skip"     # between documents, in one, skipping garbage

_BLANK_RUN = re.compile(rb"[ \t\r\n]*")
_SCALAR = re.compile(rb"[A-Za-z0-9+\-.]+")     # numbers, true/false/null; json.loads judges
_BRACE_RUN = re.compile(rb"\{(?:[ \t\r\n]*\{)+")
_SKIP_END = re.compile(rb"[{\n]")
_IN_STRING = {0x22: re.compile(rb'["\\]|\n\{'), 0x27: re.compile(rb"['\\]|\n\{")}
_OPEN_CLOSE = {0x7B: 0x7D, 0x5B: 0x5D}       # { } [ ]
_DECODER = json.JSONDecoder(strict=False)   # srjson takes raw control characters in strings


class FifoStream:
    """Splits the server FIFO's byte stream into `Document`s and `Rejected` chunks.

    `receive_data(bytes)` with each chunk read, then `next_event()` until it returns
    NEED_DATA (rule 4 needs the chunks as they were read). `abandon(reason)` ends what
    is unfinished; its events come out of `next_event()` too.
    """

    def __init__(self, max_document=MAX_DOCUMENT):
        self.max_document = max_document
        self._buf = bytearray()
        self._pos = 0             # next byte to scan
        self._queued = []         # events ready for next_event
        self._junk = None         # [reason, head, count] of target-less rejections not reported
        self._reset_document()

    def _reset_document(self):
        self._mode = IDLE
        self._stack = bytearray()     # the open containers, b"{" or b"["
        self._batch = False           # the document is an array
        self._expect = None
        self._quote = None            # 0x22 or 0x27 while inside a string
        self._escaped = False
        self._string_start = 0
        self._brace_in_string = None  # where a `{` ended the string just closed (rule 2)
        self._quiet = False           # skipping the rest of a rejected document's line
        self._oversize = False
        self._head = b""
        self._tail = b""
        self._skipped = 0             # bytes of an oversize document already dropped

    @property
    def pending(self):
        """True while an unfinished document, or garbage not yet reported, is held."""
        return self._mode != IDLE or self._junk is not None or bool(self._queued)

    def receive_data(self, data):
        """Add one chunk as it was read (b"" is allowed and does nothing)."""
        if (data.lstrip(BLANKS)[:1] == b"{" and self._mode == DOC
                and not self._buf[self._pos:].strip(BLANKS)
                and (self._quote == 0x27 or self._quote is None
                     and self._expect in (VALUE, VALUE_OR_END))):
            self._reject_open(len(self._buf), "unterminated document (the next write "
                              "began with '{' where it waited for a value)")
        self._buf += data

    def abandon(self, reason="unterminated document abandoned after idle timeout"):
        """Give up on what is unfinished (the IO layer's idle timeout)."""
        if self._mode == DOC:
            self._reject_open(len(self._buf), reason)
        elif self._mode == SKIP:
            self._garbage(len(self._buf))
            self._reset_document()
        self._flush_junk()

    def next_event(self):
        """Return the next Document or Rejected, or NEED_DATA."""
        while not self._queued:
            if self._pos >= len(self._buf) or not self._step():
                return NEED_DATA
        return self._queued.pop(0)

    # -- reporting ------------------------------------------------------------

    def _emit(self, event):
        if isinstance(event, Rejected) and event.reply_name is None:
            if self._junk is None:
                self._junk = [event.reason, event.head, 0]
            self._junk[2] += 1
            return
        self._flush_junk()
        self._queued.append(event)

    def _flush_junk(self):
        if self._junk is not None:
            reason, head, count = self._junk
            if count > 1:
                reason += " (and %d more pieces of garbage after it)" % (count - 1)
            self._queued.append(Rejected(reason, head, code=PARSE_ERROR))
            self._junk = None

    def _garbage(self, upto):
        """Bytes [0, upto) are no document: drop them (reported as junk unless quiet)."""
        if upto and not self._quiet and self._buf[:upto].strip(BLANKS):
            self._emit(Rejected("garbage (not a JSON object) skipped",
                                bytes(self._buf[:min(upto, 80)])))
        self._drop(upto)

    def _rejected(self, reason, raw, code):
        if self._oversize:
            self._keep(raw)
            raw = self._head + self._tail
        name, ident, has_id = recover_reply_target(raw)
        return Rejected(reason, (self._head or raw)[:80], name, ident, has_id, code)

    def _reject_open(self, upto, reason, code=INVALID_REQUEST):
        """The open document (bytes [0, upto)) is rejected; scanning goes on at upto."""
        event = self._rejected(reason, bytes(self._buf[:upto]), code)
        self._drop(upto)
        self._pos = 0
        self._reset_document()
        self._emit(event)

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
        self._string_start = max(self._string_start - upto, 0)
        if self._brace_in_string is not None:
            self._brace_in_string = (self._brace_in_string - upto
                                     if self._brace_in_string >= upto else None)

    # -- scanning -------------------------------------------------------------
    # Each step makes progress and returns True, or returns False: more bytes needed.

    def _step(self):
        if self._mode == IDLE:
            return self._scan_idle()
        if self._mode == SKIP:
            return self._scan_skip()
        return self._scan_document()

    def _scan_idle(self):
        buf = self._buf
        self._pos = _BLANK_RUN.match(buf, self._pos).end()
        if self._pos > self.max_document:
            self._drop(self._pos)       # only blanks so far: harmless, forget them
        if self._pos >= len(buf):
            return False
        c = buf[self._pos]
        if c == 0x7B:
            run = _BRACE_RUN.match(buf, self._pos)
            if run:             # `{{{`: all but the last brace are no document (rule 1)
                self._garbage(buf.rfind(b"{", run.start(), run.end()))
            elif self._whole_document():
                return True
            self._open(0x7B)
        elif c == 0x5B:         # a batch: read as a document, rejected whole
            self._open(0x5B)
        else:
            self._drop(self._pos)
            self._mode = SKIP
        return True

    def _whole_document(self):
        """The fast path for the usual case, a whole valid document: C's JSON decoder
        finds its end. Taken only where the grammar scan below would give the very same
        Document (ASCII, within the limit, no line starting with `{` in it)."""
        start, limit = self._pos, self.max_document - self._skipped
        try:
            text = bytes(self._buf[start:limit + 1]).decode("ascii")
            end = start + _DECODER.raw_decode(text)[1]
        except (ValueError, RecursionError):    # UnicodeDecodeError is a ValueError
            return False
        if end > limit or self._buf.find(b"\n{", start, end) >= 0:
            return False
        self._finish(end)
        return True

    def _open(self, bracket):
        self._mode = DOC
        self._batch = bracket == 0x5B
        self._stack.append(bracket)
        self._expect = KEY_OR_END if bracket == 0x7B else VALUE_OR_END
        self._pos += 1

    def _scan_skip(self):
        m = _SKIP_END.search(self._buf, self._pos)
        if m is None:
            self._garbage(len(self._buf))
            return False
        end = m.start() + (self._buf[m.start()] == 0x0A)
        self._garbage(end)
        self._reset_document()
        return True

    def _scan_document(self):
        buf = self._buf
        while True:
            if self._oversize and self._pos > 65536:
                self._trim_oversize()
            if self._quote is not None:
                done = self._scan_string()
                if done is not None:
                    return done
                continue
            pos = self._pos = _BLANK_RUN.match(buf, self._pos).end()
            self._check_length()
            if pos >= len(buf):
                self._trim_oversize()
                return False
            c = buf[pos]
            if c == 0x7B and pos > 0 and buf[pos - 1] == 0x0A:
                self._reject_open(pos, "unterminated document (a new one starts on the next line)")
                return True
            accepted = self._token(c, pos)
            if accepted is None:
                return False            # a number or literal that may go on
            if not accepted:
                self._violation(c, pos)
                return True
            self._brace_in_string = None
            self._check_length()
            if not self._stack:
                self._finish(self._pos)
                return True

    def _token(self, c, pos):
        """Take one token at `pos` if the grammar allows it there: True, False, or None
        when a number or literal reaches the end of the bytes so far."""
        expect = self._expect
        if expect == COLON:
            if c != 0x3A:
                return False
            self._expect = VALUE
        elif c in (0x22, 0x27) and expect != COMMA_OR_END:
            self._quote = c
            self._string_start = pos + 1
        elif expect in (KEY, KEY_OR_END):
            if not (c == 0x7D and expect == KEY_OR_END):
                return False
            self._close()
        elif expect == COMMA_OR_END:
            if c == 0x2C:
                self._expect = KEY if self._stack[-1] == 0x7B else VALUE
            elif c == _OPEN_CLOSE[self._stack[-1]]:
                self._close()
            else:
                return False
        elif c in _OPEN_CLOSE:
            self._stack.append(c)
            self._expect = KEY_OR_END if c == 0x7B else VALUE_OR_END
        elif c == 0x5D and expect == VALUE_OR_END:
            self._close()
        else:
            m = _SCALAR.match(self._buf, pos)
            if m is None:
                return False
            if m.end() >= len(self._buf):
                return None
            self._pos = m.end()
            self._expect = COMMA_OR_END
            return True
        self._pos = pos + 1
        return True

    def _close(self):
        self._stack.pop()
        self._expect = COMMA_OR_END

    def _scan_string(self):
        """Scan on inside a string: None when it closed (carry on), else a step result."""
        buf = self._buf
        while True:
            if self._escaped:       # the byte after a backslash is taken as it is
                if self._pos >= len(buf):
                    return False
                self._escaped = False
                self._pos += 1
            m = _IN_STRING[self._quote].search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                self._check_length()
                self._trim_oversize()
                return False
            i = m.start()
            if buf[i] == 0x0A:      # rule 3, even inside a string
                self._reject_open(i + 1, "unterminated document (a new one starts on the "
                                  "next line)")
                return True
            self._pos = i + 1
            self._check_length()
            if buf[i] == 0x5C:
                self._escaped = True
                continue
            self._quote = None
            self._expect = COLON if self._expect in (KEY, KEY_OR_END) else COMMA_OR_END
            j = i - 1
            while j >= self._string_start and buf[j] in BLANKS:
                j -= 1
            self._brace_in_string = j if j >= self._string_start and buf[j] == 0x7B else None
            return None

    def _violation(self, c, pos):
        if self._brace_in_string is not None:       # rule 2
            self._reject_open(self._brace_in_string, "unterminated document (cut inside a "
                              "string; the next one starts at its '{')")
        elif c == 0x7B:                             # rule 1
            self._reject_open(pos, "unterminated document (a new one starts at '{')")
        else:                                       # rule 5
            self._reject_open(pos, "invalid JSON document: %r where a %s was expected"
                              % (chr(c), self._expect), PARSE_ERROR)
            self._mode, self._quiet = SKIP, True

    def _check_length(self):
        if not self._oversize and self._skipped + self._pos > self.max_document:
            self._oversize = True

    def _trim_oversize(self):
        # keep the last scanned byte: rule 3 looks one byte back
        upto = self._pos - 1
        if self._oversize and upto > KEEP_BYTES:
            self._keep(bytes(self._buf[:upto]))
            self._drop(upto)

    def _finish(self, end):
        if self._batch:
            event = self._rejected("batch requests are not supported",
                                   bytes(self._buf[:end]), INVALID_REQUEST)
        elif self._oversize:
            event = self._rejected("document too large (%d bytes, limit %d)"
                                   % (self._skipped + end, self.max_document),
                                   bytes(self._buf[:end]), INVALID_REQUEST)
        else:
            event = Document(bytes(self._buf[:end]).strip(BLANKS))
        self._drop(end)
        self._reset_document()
        self._emit(event)
