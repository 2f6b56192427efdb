"""The classic MI FIFO protocol (Kamailio 3.3 mi_fifo), sans-IO.

Bytes in, events out (`MIParser`: `receive_data(bytes)`, then `next_event()` until
NEED_DATA; errors are events); reply trees in, bytes out (`encode_reply`).
Nothing here touches files, FIFOs or clocks: `mi_fifo.py` does the IO.

Grammar, as observed on a real 3.3.7 (spec/kamailio-3.3-observed.md, section 2)::

    request    = first-line *arg-line end-line
    first-line = ":" command ":" reply-name LF    ; trailing CR/SP/TAB trimmed, <= 1023 bytes
    arg-line   = [ws] ( name "::" [ws] value | value | DQUOTE qvalue DQUOTE [ws] ) LF
    end-line   = LF                               ; only a lone "\\n" ends a request

Requests arrive on one byte stream shared by every client, with no write
boundaries. Kamailio loses sync in several ways (a stray empty line, a parse
error or a 1024-byte first line each make it swallow the *next* request). This
parser resyncs instead, by these rules:

1. Where a first line is expected, an empty or whitespace-only line is skipped.
2. After a bad first line, a parse error or an over-long line, the rest of that
   request is discarded up to its own end line, and no further.
3. A line of the form `:<known command>:<reply name>` inside a request's args
   (or while discarding) is taken as the start of the next request: the
   unfinished request before it is abandoned (a ProtocolDrop event) and never
   run. No real argument looks like that; a client that never wrote its end
   line is the only way to get there.
4. A chunk passed to `receive_data()` that begins with `:<known command>:` while the
   buffer holds half a line also abandons that half line and its request:
   clients write a whole request with one write(), so the half line belongs to
   a client that stopped mid-line.
5. `abandon()` drops whatever is unfinished; the IO layer calls it after a
   request has been idle for a bounded time.
"""
import re
from dataclasses import dataclass
from typing import NamedTuple

from kamflat.proto.sansio import NEED_DATA

FIRST_LINE_MAX = 1023       # bytes incl. LF: Kamailio's fgets() into a 1024-byte buffer
ARG_BUFFER = 8192           # one parse buffer shared by all arg lines of a request
REPLY_PATH_MAX = 127        # len(reply_dir) + len(name) (MAX_MI_FILENAME 128 incl. NUL)
FORBIDDEN_IN_REPLY_NAME = ".\\/\0"   # NUL: Kamailio's C strings would cut the name there
_FORBIDDEN = re.compile("[%s]" % re.escape(FORBIDDEN_IN_REPLY_NAME))
_TRIM = b"\r\n \t"
_WS = b" \t\n\r\v\f"


class Arg(NamedTuple):
    """One argument line: `name::value` ("" when absent)."""
    name: str
    value: str


@dataclass(frozen=True)
class Request:
    """A complete, well-formed request: run `command`, reply into `reply_name`."""
    command: str
    reply_name: str
    args: tuple = ()


@dataclass(frozen=True)
class UnknownCommand:
    """First line names a command that does not exist: reply with the 500 line."""
    command: str
    reply_name: str


@dataclass(frozen=True)
class ParseError:
    """The args could not be parsed: reply with the 400 line, do not run."""
    command: str
    reply_name: str
    reason: str


@dataclass(frozen=True)
class ProtocolDrop:
    """Nothing can be replied (or the request never ended): log `reason` and drop."""
    reason: str
    logline: str = ""


@dataclass(frozen=True)
class Node:
    """One reply line (and its children): `name:: value key=val...`."""
    name: str = None
    value: str = None
    attrs: tuple = ()       # ((key, value), ...)
    children: tuple = ()


def text(raw):
    """Wire bytes -> str; every byte survives (undecodable ones as surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def wire(s):
    return s.encode("utf-8", "surrogateescape")


def _wire_length(s):
    """Bytes `s` takes on the wire. A JSON-RPC name may hold a lone surrogate (a
    "\\ud800" escape) that no UTF-8 can carry: counted as the 3 bytes a C decoder
    writes for it, so the check answers instead of raising (opening such a name
    is then refused by fifoio)."""
    try:
        return len(wire(s))
    except UnicodeEncodeError:
        return len(s.encode("utf-8", "surrogatepass"))


def check_reply_name(name, reply_dir, path_length=None):
    """Why Kamailio would refuse this reply FIFO name, or None if it is fine.

    path_length: the wire length of reply_dir + name when the caller has it already
    (the MI parser has the name's bytes)."""
    if _FORBIDDEN.search(name):
        return "Forbidden reply fifo filename: %s" % name
    if path_length is None:
        path_length = _wire_length(reply_dir) + _wire_length(name)
    if path_length > REPLY_PATH_MAX:
        return "Reply fifo filename too long %d" % path_length
    return None


# States of MIParser.
_FIRST, _ARGS, _QUOTE, _DRAIN, _SKIP_LINE = "first", "args", "quote", "drain", "skip_line"


class MIParser:
    """Turns the server FIFO's byte stream into events, one request at a time.

    Args:
        commands: names of the commands that exist (None: all exist, and rule 3/4
            of the module docstring is off).
        no_input: commands whose args Kamailio reads and discards (MI_NO_INPUT).
        reply_dir: the reply_dir param, for the reply name length limit.
    """

    def __init__(self, commands=None, no_input=(), reply_dir="/tmp/"):
        self.commands = None if commands is None else frozenset(commands)
        self.no_input = frozenset(no_input)
        self.reply_dir = reply_dir
        self._dir_length = _wire_length(reply_dir)
        self._buf = bytearray()
        self._queued = []
        self._reset()

    def _reset(self):
        self._state = _FIRST
        self._after_skip = _FIRST
        self._head = None          # (command, reply_name, first line's bytes) of the current request
        self._emit_at_end = False  # a NO_INPUT request being drained is emitted at its end
        self._args = []
        self._budget = ARG_BUFFER
        self._qname = self._qvalue = None

    @property
    def pending(self):
        """True while a request (or part of a line) is unfinished."""
        return bool(self._buf) or self._state != _FIRST

    def receive_data(self, data):
        """Add one chunk as it was read from the FIFO (rule 4 needs the chunks as they
        came); then call `next_event()` until NEED_DATA. b"" does nothing."""
        if not data:
            return
        half_line = self._state == _SKIP_LINE or (self._buf and b"\n" not in self._buf)
        if half_line and self._starts_request(data):
            self.abandon("request stopped mid-line; the next request began")
        self._buf += data

    def abandon(self, reason="unfinished request abandoned"):
        """Drop whatever is unfinished, buffered half line included; the events that
        report it (none if nothing was pending) come out of `next_event()`."""
        was_first = self._state == _FIRST
        self._queued.extend(self._drop_current(reason))
        if was_first and self._buf.strip(_WS):
            self._queued.append(ProtocolDrop(reason, text(bytes(self._buf[:200]))))
        self._buf.clear()

    def _drop_current(self, reason):
        """Forget the current request; a ProtocolDrop if it was a live one."""
        events = []
        if self._state in (_ARGS, _QUOTE) or self._emit_at_end:
            events.append(ProtocolDrop(reason, text(self._head[2])))
        self._reset()
        return events

    def next_event(self):
        """The next event, or NEED_DATA."""
        while True:
            if self._queued:
                return self._queued.pop(0)
            if self._state == _SKIP_LINE:
                nl = self._buf.find(b"\n")
                if nl < 0:
                    self._buf.clear()
                    return NEED_DATA
                del self._buf[:nl + 1]
                self._state = self._after_skip
                continue
            limit = FIRST_LINE_MAX if self._state in (_FIRST, _DRAIN) else self._budget - 1
            nl = self._buf.find(b"\n", 0, limit)
            if nl < 0:
                if len(self._buf) < limit:
                    return NEED_DATA
                event = self._line_too_long()
                if event is not None:
                    return event
                continue
            line = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            event = self._first_line(line) if self._state == _FIRST else self._line(line)
            if event is not None:
                return event

    # -- one line, by state ------------------------------------------------

    def _line(self, line):
        """A line inside a request (next_event takes first lines to _first_line)."""
        if self._interrupts(line):
            self._queued.extend(self._drop_current("request without its end line; the next request began"))
            event = self._first_line(line)
            if event is not None:
                self._queued.append(event)
            return None
        if self._state == _DRAIN:
            if line == b"\n":
                event = self._request() if self._emit_at_end else None
                self._reset()
                return event
            return None
        if self._state == _QUOTE:
            return self._quote_line(line)
        return self._arg_line(line)

    def _line_too_long(self):
        """The buffer holds `limit` bytes and no LF: what Kamailio calls 'request line too long'."""
        state = self._state
        head = self._head
        shown = text(bytes(self._buf[:200]))
        del self._buf[:FIRST_LINE_MAX if state in (_FIRST, _DRAIN) else self._budget - 1]
        self._state, self._after_skip = _SKIP_LINE, _DRAIN
        if state == _FIRST:
            return ProtocolDrop("request line too long (first line over %d bytes)" % FIRST_LINE_MAX,
                                shown)
        if state == _DRAIN:
            return None         # draining tolerates long lines
        self._emit_at_end = False
        return ParseError(head[0], head[1], "request line too long")

    def _first_line(self, line):
        stripped = line.rstrip(_TRIM)
        if not stripped.strip(_WS):
            return None         # stray empty line: skipped (Kamailio would swallow the next request)
        self._state = _DRAIN    # every drop discards the rest of its request
        if len(stripped) < 3:
            return ProtocolDrop("fifo command must have at least 3 chars", text(stripped[:200]))
        if stripped[:1] != b":":
            return ProtocolDrop("fifo command must begin with ':'", text(stripped[:200]))
        sep = stripped.find(b":", 1)
        if sep < 0:
            return ProtocolDrop("file separator missing in fifo command", text(stripped[:200]))
        if sep == 1:
            return ProtocolDrop("empty fifo command", text(stripped[:200]))
        command, reply_name = text(stripped[1:sep]), text(stripped[sep + 1:])
        if not reply_name:
            return ProtocolDrop("no reply fifo name after the second ':'", text(stripped[:200]))
        # the name's wire length is its bytes' (text() keeps every byte)
        refused = check_reply_name(reply_name, self.reply_dir,
                                   self._dir_length + len(stripped) - sep - 1)
        if refused:
            return ProtocolDrop(refused, text(stripped[:200]))
        self._head = (command, reply_name, stripped[:200])
        if self.commands is not None and command not in self.commands:
            return UnknownCommand(command, reply_name)
        if command in self.no_input:
            if self._buf[:1] == b"\n":
                # the end line follows at once, as kamctl writes it: the request is
                # complete, with nothing to drain (what _DRAIN would do, in one step)
                del self._buf[:1]
                self._state = _FIRST
                return Request(command, reply_name)
            self._emit_at_end = True
        else:
            self._state = _ARGS
        return None

    def _interrupts(self, line):
        """Rule 3: is this line the first line of a new request?"""
        if self.commands is None or not line.startswith(b":"):
            return False
        stripped = line.rstrip(_TRIM)
        sep = stripped.find(b":", 1)
        return (sep > 1 and sep + 1 < len(stripped)
                and text(stripped[1:sep]) in self.commands
                and check_reply_name(text(stripped[sep + 1:]), self.reply_dir) is None)

    def _starts_request(self, data):
        """Rule 4: does this chunk begin with `:<known command>:`?"""
        if self.commands is None or not data.startswith(b":"):
            return False
        sep = data.find(b":", 1, 200)
        return sep > 1 and text(data[1:sep]) in self.commands

    def _request(self):
        command, reply_name, _ = self._head
        return Request(command, reply_name, tuple(self._args))

    def _parse_error(self, reason):
        """Report the error now; the rest of the request is discarded up to its end line."""
        command, reply_name, _ = self._head
        self._state = _DRAIN
        return ParseError(command, reply_name, reason)

    def _arg_line(self, line):
        if line == b"\n":
            event = self._request()
            self._reset()
            return event
        body = line[:-1].lstrip(_WS)
        if not body.strip(_WS):
            return None         # whitespace-only (or CRLF) line inside args: skipped
        self._budget -= len(line) - 1
        if body.startswith(b'"'):
            return self._open_quote("", body[1:])
        sep = body.find(b"::")
        name_part, value = (b"", body) if sep < 0 else (body[:sep], body[sep + 2:].lstrip(_WS))
        if b'"' in name_part:
            return self._parse_error('parse error around "')
        if sep >= 0 and value.startswith(b'"'):
            return self._open_quote(text(name_part.rstrip(_WS)), value[1:])
        if b'"' in value:
            return self._parse_error('parse error around "')
        self._args.append(Arg(text(name_part.rstrip(_WS)), text(value.rstrip(_WS))))
        return None

    def _open_quote(self, name, rest):
        self._qname, self._qvalue = name, bytearray()
        self._state = _QUOTE
        return self._quote_segment(rest + b"\n")

    def _quote_line(self, line):
        if line == b"\n":      # the request ended inside the quotes: nothing left to discard
            event = self._parse_error("end line inside a quoted value")
            self._reset()
            return event
        self._budget -= len(line)
        return self._quote_segment(line)

    def _quote_segment(self, seg):
        """Scan one line of a quoted value (ends with LF), Kamailio's way.

        `\\"` gives `"`, except when the backslash is the first byte of the line
        segment (mi_parser.c's `start+1 != p` check); no other escapes exist.
        """
        out = bytearray()
        for i in range(len(seg) - 1):
            c = seg[i]
            if c != 0x22:
                out.append(c)
            elif len(out) != 1 and out[-1:] == b"\\":
                out[-1] = 0x22
            else:
                if seg[i + 1:].strip(_WS):
                    return self._parse_error("parse error around %s" % text(seg[i + 1:].strip(_WS)[:1]))
                value = bytes(self._qvalue + out)
                if not value:
                    return self._parse_error('empty quoted value ""')
                self._args.append(Arg(self._qname, text(value)))
                self._state = _ARGS
                return None
        self._qvalue += out + b"\n"   # the value goes on: the newline is part of it
        return None


# -- replies ------------------------------------------------------------------

def encode_node(node, depth, indent, out):
    line = [indent * depth]
    if node.name is not None:
        line.append(node.name + ":: ")
    if node.value is not None:
        line.append(node.value)
    for key, value in node.attrs:
        line.append(" %s=%s" % (key, value))
    line.append("\n")
    out.append("".join(line))
    for child in node.children:
        encode_node(child, depth + 1, indent, out)


def encode_reply(code, reason, nodes=(), indent="\t"):
    """A tree reply: status line, one line per node (depth-first), then an empty line.

    Values are not escaped (as in Kamailio): a value with a newline in it ends
    up as two lines.
    """
    if not nodes:           # most replies (flat_rotate's 200 OK): the status line alone
        return wire("%d %s\n\n" % (code, reason))
    out = ["%d %s\n" % (code, reason)]
    for node in nodes:
        encode_node(node, 0, indent, out)
    out.append("\n")
    return wire("".join(out))


def command_not_available(command):
    """mi_fifo's own one-line error (no empty line after it)."""
    return wire("500 command '%s' not available\n" % command)


def parse_error_reply(command):
    """mi_fifo's own one-line error for unparsable args (no empty line after it)."""
    return wire("400 parse error in command '%s'\n" % command)


def command_failed(command):
    """mi_fifo's one-line error when a command gave no reply at all."""
    return wire("500 command '%s' failed\n" % command)


def encode_request(command, reply_name, args=()):
    """The request bytes a kamctl-style client writes (one arg per line)."""
    lines = [":%s:%s\n" % (command, reply_name)]
    lines.extend("%s\n" % arg for arg in args)
    lines.append("\n")
    return wire("".join(lines))
