"""SIP requests, as much of them as accounting needs: parse a datagram, build sl replies.

Pure: bytes in, objects out; objects in, bytes out. Text is decoded as UTF-8 with
`surrogateescape`, so any byte a client sends comes back out unchanged when the value is
encoded the same way (Kamailio writes header bytes to the acc files raw).

What is checked follows Kamailio 5.6's core parser where it decides the outcome:
- the first line must be `METHOD URI SIP/2.0`; a response or garbage is a SipError;
- every header line needs a name and a ':'; Via, To, CSeq and Content-Length are parsed
  when read (a bad one drops the whole message, as Kamailio's parse_headers() fails);
- From is parsed only when asked (`request.from_addr()`): Kamailio's acc refuses to
  account a request whose From does not parse but still answers it.
Header values are the body after the ':' and leading white space, trailing white space
removed, folding (CR LF + space) kept as sent, as Kamailio's hdr->body.
"""
import re
import zlib
from dataclasses import dataclass, field

from kamflat.proto.sipaddr import AddrError, parse_name_addr
from kamflat.proto.sipuri import memoised

# Compact forms (RFC 3261 7.3.3 and later RFCs) -> the full lowercase name.
COMPACT = {
    "f": "from", "t": "to", "i": "call-id", "v": "via", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "r": "refer-to", "b": "referred-by",
    "u": "allow-events", "x": "session-expires", "y": "identity",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
}


def header_key(name):
    """The name a header is looked up by: lowercase, compact forms expanded."""
    key = name.lower()
    return COMPACT.get(key, key)


class SipError(ValueError):
    """A datagram that is not a usable SIP request. `reason` is a short counter name."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Header:
    name: str     # as written ("v", "From", "call-id")
    key: str      # header_key(name)
    value: str    # body: leading LWS and trailing white space removed, folding kept
    raw: str      # the whole header as sent, continuation lines and line end included


@dataclass(slots=True)
class Via:
    host: str
    port: int            # 0 when absent
    params: dict         # lowercase name -> value (None for a bare flag such as rport)
    end: int             # offset in the header value where this via's text ends
    value: str           # the header value (Kamailio's hdr->body)


@dataclass(slots=True)
class Request:
    """A parsed request. The headers are kept as the parser found them, (name as
    written, ':', the text after the ':' up to the line end, continuation lines
    included; name + ':' + text is the header as sent) with their keys beside them;
    Header objects are made only for the headers asked for (header(), headers), as
    most are only copied or ignored."""
    method: str
    uri: str
    lines: list                    # (name, ':', text after it) per header, in order
    keys: list                     # header_key() of each of `lines`
    via_line: tuple                # the first of `lines` that is a Via, and a To
    to_line: tuple
    to: object                     # NameAddr, parsed at once as Kamailio does
    to_value: str
    from_value: str
    call_id: str
    cseq_num: str
    cseq_method: str
    via1: Via
    _from: object = field(default=None)
    cache: dict = field(default_factory=dict)   # per-request memo (parsed URIs, ...)

    def header(self, key):
        """The first header whose key (see header_key) is `key`, else None."""
        keys = self.keys
        return _header(key, self.lines[keys.index(key)]) if key in keys else None

    @property
    def headers(self):
        """Every header, in order, as Header objects."""
        return [_header(key, line) for key, line in zip(self.keys, self.lines)]

    def from_addr(self):
        """The parsed From (NameAddr). Raises SipError('bad_from') if Kamailio's parser
        would reject it."""
        if self._from is None:
            try:
                self._from = parse_name_addr(self.from_value)
            except AddrError as e:
                raise SipError("bad_from", "bad From header: %s" % e) from None
        return self._from


def _header(key, line):
    name, colon, after = line
    return Header(name.rstrip(_LWS), key, _value(after), name + colon + after + "\n")


def _value(after):
    """A header's value as Kamailio's hdr->body from the text after its ':': leading
    blanks and folding skipped, trailing white space removed."""
    sent = after.lstrip(_LWS)
    if sent[:1] in ("\r", "\n"):
        sent = sent[_LEADING_FOLDS.match(sent).end():]
    return sent.rstrip(_BLANKS)


# Every regex here runs in time linear in its input whatever the input (possessive
# quantifiers, no two ways to match the same text): a datagram is up to 64 KiB and
# parsing it must not stall a writer (tests/test_sip_linear.py).
_LWS = " \t"
_BLANKS = " \t\r\n"
_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]++\Z")
_VERSION = "SIP/2.0"
# The request line as nearly every client writes it; anything else is checked the
# long way (which accepts everything this accepts, with the same result).
_REQUEST_LINE = re.compile(r"([A-Za-z0-9.!%*_+`'~-]++) ([^ \r\n]++) SIP/2\.0\r*+\n")
# Kamailio's parse_cseq(): two white-space separated tokens, the number not checked.
_CSEQ_RE = re.compile(r"([^ \t\r\n]++)[ \t]++([^ \t\r\n]++)\Z")
_VIA_RE = re.compile(
    r"SIP[ \t]*+/[ \t]*+2\.0[ \t]*+/[ \t]*+[A-Za-z]++[ \t\r\n]++"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9._-]++)(?:[ \t]*+:[ \t]*+([0-9]{1,5}+))?+[ \t]*+"
    r"((?:;[^;, \t\r\n]*+[ \t\r\n]*+)*+)")                      # ;params
# One header line with its continuation lines, as str.partition(":") splits it: the
# name as written, the ':' ("" on a line without one), the text after it. It matches
# at every line start, so findall() walks the block line by line and never rescans.
_HEADER_RE = re.compile(r"([^:\n]*+)(:?)([^\n]*+(?:\n[ \t][^\n]*+)*+)\n")
# Folding right after the ':' (Kamailio skips it): "\r\n " then blanks, repeated.
_LEADING_FOLDS = re.compile(r"(?:(?=\r?\n[ \t])[\r\n]*+[ \t]*+)*+")
_REQUIRED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"),
             ("cseq", "CSeq"))


def parse_request(data):
    """Parse one datagram into a Request, or raise SipError(reason, message)."""
    text = data.decode("utf-8", "surrogateescape").lstrip("\r\n\0 \t")
    m = _REQUEST_LINE.match(text)
    if m is not None:
        method, uri = m.groups()
        pos = m.end()
    else:
        method, uri, pos = _request_line(text)
    lines, keys, folded = _split_headers(text, pos)
    try:
        # A few headers: finding them in the list is cheaper than a dict of them all.
        via_line, to_line = lines[keys.index("via")], lines[keys.index("to")]
        cseq_line, id_line = lines[keys.index("cseq")], lines[keys.index("call-id")]
        from_line = lines[keys.index("from")]
    except ValueError:
        _missing_header(keys)
    if folded:
        via, to, cseq, call_id, from_ = [_value(line[2]) for line in
                                          (via_line, to_line, cseq_line, id_line, from_line)]
    else:       # _value() without folding, inlined: this is the hot path
        via = via_line[2].lstrip(_LWS).rstrip(_BLANKS)
        to = to_line[2].lstrip(_LWS).rstrip(_BLANKS)
        cseq = cseq_line[2].lstrip(_LWS).rstrip(_BLANKS)
        call_id = id_line[2].lstrip(_LWS).rstrip(_BLANKS)
        from_ = from_line[2].lstrip(_LWS).rstrip(_BLANKS)
    via1 = parse_via(via)
    if keys.count("via") > 1:
        for key, line in zip(keys, lines):
            if key == "via" and line is not via_line:
                parse_via(_value(line[2]))
    try:
        to_addr = parse_name_addr(to)
    except AddrError as e:
        raise SipError("bad_header", "bad To header: %s" % e) from None
    m = _CSEQ_RE.match(cseq)
    if not m:
        raise SipError("bad_header", "bad CSeq %r" % cseq[:40])
    return Request(method, uri, lines, keys, via_line, to_line, to_addr, to, from_, call_id,
                   m.group(1), m.group(2), via1)


def _missing_header(keys):
    for key, title in _REQUIRED:
        if key not in keys:
            raise SipError("missing_header", "no %s header" % title)


def _request_line(text):
    """(method, uri, where the headers start) of a first line _REQUEST_LINE did not
    take, or SipError."""
    eol = text.find("\n")
    if eol < 0:
        raise SipError("bad_first_line", "no complete first line")
    first = text[:eol].rstrip("\r")
    if first.startswith("SIP/"):
        raise SipError("response", "a SIP response, not a request: %r" % first[:60])
    parts = first.split(" ")
    if len(parts) != 3 or not parts[1] or not _TOKEN_RE.match(parts[0]) \
            or parts[2].upper() != _VERSION:
        raise SipError("bad_first_line", "bad request line %r" % first[:80])
    return parts[0], parts[1], eol + 1


def _split_headers(text, pos):
    """(lines, keys, whether a line is folded) of the header block at `pos` (see
    Request)."""
    # The header block ends at the first empty line (CR LF or LF), as in Kamailio.
    if pos < len(text) and text[pos] in "\r\n":
        return [], [], False
    end = text.find("\n\r\n", pos)
    lf = text.find("\n\n", pos, None if end < 0 else end + 1)
    if lf >= 0:
        end = lf
    elif end < 0:                       # no empty line: the datagram ends the block
        end = len(text) - 1 if text.endswith("\n") else len(text)
    block = text[pos:end]               # the header lines, without the last line end
    folded = "\n " in block or "\n\t" in block
    if folded:
        lines = _HEADER_RE.findall(block + "\n")      # continuation lines
    else:
        lines = [line.partition(":") for line in block.split("\n")]
    try:
        keys = [_KEYS[name] for name, colon, _ in lines if colon]
    except KeyError:                    # a name not seen before
        keys = None
    if keys is None or len(keys) < len(lines):
        keys = _new_keys(lines, block)
    n = keys.count("content-length")    # every Content-Length must be a number
    if n:
        if n == 1 and not folded:       # _value() inlined
            after = lines[keys.index("content-length")][2]
            if after.lstrip(_LWS).rstrip(_BLANKS).isdigit():
                return lines, keys, folded
        for key, line in zip(keys, lines):
            if key == "content-length" and not _value(line[2]).isdigit():
                raise SipError("bad_header", "bad Content-Length %r" % _value(line[2])[:40])
    return lines, keys, folded


def _new_keys(lines, block):
    """The keys of `lines`, names not seen before worked out, or SipError: first for
    any line without a name and ':', then for the first name that is no token (the
    order Kamailio's parser finds them in)."""
    for name, colon, _ in lines:
        if not colon or "\r" in name:
            raise SipError("bad_header", "a header line without a name and ':' in %r"
                           % (block + "\n")[:60])
    keys = [_KEYS.get(name) for name, _, _ in lines]
    for i, key in enumerate(keys):
        if key is None:
            name = lines[i][0]
            stripped = name.rstrip(_LWS)
            if not stripped or not _TOKEN_RE.match(stripped):
                raise SipError("bad_header", "bad header name %r" % name[:40])
            keys[i] = key = header_key(stripped)
            if len(_KEYS) < 1000:                 # a bounded memo of the names seen
                _KEYS[name] = key
    return keys


_KEYS = {}     # header name as written (before ':') -> header_key(name)


def parse_via(value):
    """The first via of a Via header value: sent-by and parameters. SipError if bad."""
    # The same sent-by and parameters come again and again, each time with a new
    # branch: when the value ends in a ;branch= that _VIA_RE takes, the part before it
    # is looked up in a memo. (Appending such a parameter to a value _VIA_RE takes whole
    # gives one it takes whole, with one more parameter; the first of a name counts.)
    head, sep, branch = value.rpartition(";branch=")
    if sep and _BRANCH_VALUE.match(branch):
        known = _via_head_seen(head)
        if known:
            host, port, params = known
            params = dict(params)
            params.setdefault("branch", branch)
            return Via(host, port, params, len(value), value)
    via = _parse_via(value)
    if via is None:
        raise SipError("bad_header", "bad Via %r" % value[:60])
    return via


def _parse_via(value):
    """parse_via(), or None when the value is bad."""
    m = _VIA_RE.match(value)
    end = m.end() if m else 0
    if not m or (end < len(value) and value[end] != ","):
        return None
    host, port, param_text = m.groups()
    params = {}
    for param in param_text.split(";")[1:]:
        name, eq, pval = param.rstrip(_BLANKS).partition("=")
        name = name.lower()
        if name not in params:
            params[name] = pval if eq else None
    return Via(host, int(port) if port else 0, params, end, value)


def _parse_via_head(head):
    """(host, port, params) of a Via value _VIA_RE takes whole, else False."""
    via = _parse_via(head)
    return (via.host, via.port, via.params) if via and via.end == len(head) else False


_via_head_seen = memoised(_parse_via_head)
_BRANCH_VALUE = re.compile(r"[^;, \t\r\n]*+\Z")     # a parameter _VIA_RE ends with


# --- replies ---------------------------------------------------------------------

def reply_destination(request, source):
    """Where sl sends the reply: the source IP; the source port when the top Via asks
    for rport, else the Via's port (5060 when absent), as Kamailio does over UDP."""
    if "rport" in request.via1.params:
        return source
    return (source[0], request.via1.port or 5060) + tuple(source[2:])


def to_tag_for(request, secret="kamflat"):
    """A stateless To tag shaped like Kamailio sl's: 32 hex chars, '.', 8 hex chars.

    The suffix depends on Call-ID, From tag and top branch, so a retransmission gets
    the same tag (sl computes it the same way)."""
    head = _TAG_HEADS.get(secret)
    if head is None:
        head = _TAG_HEADS.setdefault(secret, "%08x" % zlib.crc32(secret.encode()) * 4)
    seed = "%s|%s|%s" % (request.call_id, request.from_value,
                         request.via1.params.get("branch") or "")
    return "%s.%08x" % (head, zlib.crc32(seed.encode("utf-8", "surrogateescape")))


_TAG_HEADS = {}
_COPIED = frozenset(("via", "from", "to", "call-id", "cseq"))


def build_reply(request, code, reason, to_tag, *, source=None, server="kamflat"):
    """The bytes sl_send_reply() sends: status line, the request's Via, From, To,
    Call-ID and CSeq headers copied in their order (Record-Route too for 180..299),
    To tag added when the request has none, the top Via given received=/rport= when
    `source` (ip, port) says so, then Server and Content-Length: 0."""
    out = ["SIP/2.0 %d %s\r\n" % (code, reason)]
    via1 = request.via_line
    to = request.to_line if to_tag and not request.to.tag else None
    record_route = 180 <= code < 300
    for key, line in zip(request.keys, request.lines):
        if key in _COPIED:
            if line is via1:
                out.append(_via1_for_reply(line, request.via1, source))
            elif line is to:
                out.append(_insert_after_value(line, ";tag=" + to_tag))
            else:
                out += line
                out += _LF
        elif key == "record-route" and record_route:
            out += line
            out += _LF
    if server:
        out.append("Server: %s\r\n" % server)
    out.append("Content-Length: 0\r\n\r\n")
    return "".join(out).encode("utf-8", "surrogateescape")


_LF = ("\n",)


def _insert_after_value(line, text):
    """The header as sent with `text` inserted right after its value (_value()), that
    is after the last character of the line that is not white space."""
    name, colon, after = line
    body = after.rstrip(_BLANKS)
    return "%s%s%s%s%s\n" % (name, colon, body, text, after[len(body):])


_RPORT = re.compile(r";[ \t]*+rport(=[0-9]*+)?+(?=[;, \t\r\n]|\Z)", re.I)


def _via1_for_reply(line, via, source):
    if source is None:
        source = (via.host, via.port)
    ip, port = source[0], source[1]
    name, colon, after = line
    rport = "rport" in via.params
    if not rport and via.host.strip("[]") == ip:
        # The Via as sent, its value ending the text after the ':' (see _value()).
        # Kamailio rebuilds the top Via with a CR LF line end even when the request
        # used LF
        return "%s%s%s\r\n" % (name, colon, after.rstrip(_BLANKS))
    full = via.value
    value = full[:via.end]
    if rport:
        value = _RPORT.sub(";rport=%d" % port, value, count=1)
    value = value.rstrip(_BLANKS) + ";received=" + ("[%s]" % ip if ":" in ip else ip)
    return "%s%s%s%s%s\r\n" % (name, colon, after[:after.find(full)], value, full[via.end:])
