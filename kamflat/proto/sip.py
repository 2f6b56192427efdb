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


@dataclass(slots=True)
class Request:
    method: str
    uri: str
    headers: list
    first: dict                    # key -> the first Header with that key
    to: object                     # NameAddr, parsed at once as Kamailio does
    call_id: str
    cseq_num: str
    cseq_method: str
    via1: Via
    _from: object = field(default=None)
    cache: dict = field(default_factory=dict)   # per-request memo (parsed URIs, ...)

    def header(self, key):
        """The first header whose key (see header_key) is `key`, else None."""
        return self.first.get(key)

    def from_addr(self):
        """The parsed From (NameAddr). Raises SipError('bad_from') if Kamailio's parser
        would reject it."""
        if self._from is None:
            try:
                self._from = parse_name_addr(self.first["from"].value)
            except AddrError as e:
                raise SipError("bad_from", "bad From header: %s" % e) from None
        return self._from


# Every regex here runs in time linear in its input whatever the input (possessive
# quantifiers, no two ways to match the same text): a datagram is up to 64 KiB and
# parsing it must not stall a writer (tests/test_sip_linear.py).
_LWS = " \t"
_BLANKS = " \t\r\n"
_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]++\Z")
_VERSION = "SIP/2.0"
# Kamailio's parse_cseq(): two white-space separated tokens, the number not checked.
_CSEQ_RE = re.compile(r"([^ \t\r\n]++)[ \t]++([^ \t\r\n]++)\Z")
_VIA_RE = re.compile(
    r"SIP[ \t]*+/[ \t]*+2\.0[ \t]*+/[ \t]*+[A-Za-z]++[ \t\r\n]++"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9._-]++)(?:[ \t]*+:[ \t]*+([0-9]{1,5}+))?+[ \t]*+"
    r"((?:;[^;, \t\r\n]*+[ \t\r\n]*+)*+)")                      # ;params
# One header line (with its continuation lines): its whole text, the name as written,
# the ':' ("" on a line without one) and the value after ':' and blanks. It matches at
# every line start, so findall() walks the block line by line and never rescans.
_HEADER_RE = re.compile(r"(([^:\n]*+)(:?)[ \t]*+([^\n]*+(?:\n[ \t][^\n]*+)*+)\n)")
# Folding right after the ':' (Kamailio skips it): "\r\n " then blanks, repeated.
_LEADING_FOLDS = re.compile(r"(?:(?=\r?\n[ \t])[\r\n]*+[ \t]*+)*+")
_REQUIRED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"),
             ("cseq", "CSeq"))


def parse_request(data):
    """Parse one datagram into a Request, or raise SipError(reason, message)."""
    text = data.decode("utf-8", "surrogateescape").lstrip("\r\n\0 \t")
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
    headers, first_of, vias = _split_headers(text, eol + 1)
    for key, title in _REQUIRED:
        if key not in first_of:
            raise SipError("missing_header", "no %s header" % title)
    via1 = parse_via(vias[0].value)
    for h in vias[1:]:
        parse_via(h.value)
    to = first_of["to"].value
    try:
        to = parse_name_addr(to)
    except AddrError as e:
        raise SipError("bad_header", "bad To header: %s" % e) from None
    cseq = first_of["cseq"].value
    m = _CSEQ_RE.match(cseq)
    if not m:
        raise SipError("bad_header", "bad CSeq %r" % cseq[:40])
    return Request(parts[0], parts[1], headers, first_of, to, first_of["call-id"].value,
                   m.group(1), m.group(2), via1)


def _split_headers(text, pos):
    """(headers, {key: first header}, [Via headers]) of the header block at `pos`."""
    # The header block ends at the first empty line (CR LF or LF), as in Kamailio.
    if pos < len(text) and text[pos] in "\r\n":
        return [], {}, []
    end = text.find("\n\r\n", pos)
    lf = text.find("\n\n", pos, None if end < 0 else end + 1)
    if lf >= 0:
        end = lf
    block = text[pos:end + 1] if end >= 0 else text[pos:]
    if not block.endswith("\n"):
        block += "\n"                            # datagram cut inside a header
    found = _HEADER_RE.findall(block)
    keys = _KEYS
    headers = []
    first = {}
    vias = []
    bad_length = None
    for raw, name, colon, value in found:
        known = keys.get(name)
        if known is None or not colon:
            known = _new_key(name, colon, block, found)
        if value[:1] in ("\r", "\n"):
            value = value[_LEADING_FOLDS.match(value).end():]
        h = Header(known[0], known[1], value.rstrip(_BLANKS), raw)
        headers.append(h)
        key = known[1]
        if key not in first:
            first[key] = h
        if key == "via":
            vias.append(h)
        elif key == "content-length" and bad_length is None and not h.value.isdigit():
            bad_length = h
    if bad_length is not None:
        raise SipError("bad_header", "bad Content-Length %r" % bad_length.value[:40])
    return headers, first, vias


def _new_key(name, colon, block, found):
    """(name without trailing blanks, header_key) of a header name not seen before, or
    SipError: first for any line in the block without a name and ':', then for the first
    name that is no token (the order Kamailio's parser finds them in)."""
    for _, other, other_colon, _ in found:
        if not other_colon or "\r" in other:
            raise SipError("bad_header", "a header line without a name and ':' in %r"
                           % block[:60])
    stripped = name.rstrip(_LWS)
    if not stripped or not _TOKEN_RE.match(stripped):
        raise SipError("bad_header", "bad header name %r" % name[:40])
    known = (stripped, header_key(stripped))
    if len(_KEYS) < 1000:                       # a bounded memo of the names seen
        _KEYS[name] = known
    return known


_KEYS = {}     # header name as written (before ':') -> (name stripped, header_key(name))


def parse_via(value):
    """The first via of a Via header value: sent-by and parameters. SipError if bad."""
    m = _VIA_RE.match(value)
    end = m.end() if m else 0
    if not m or (end < len(value) and value[end] != ","):
        raise SipError("bad_header", "bad Via %r" % value[:60])
    params = {}
    for param in m.group(3).split(";")[1:]:
        name, eq, pval = param.rstrip(_BLANKS).partition("=")
        name = name.lower()
        if name not in params:
            params[name] = pval if eq else None
    return Via(m.group(1), int(m.group(2) or 0), params, end)


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
    branch = request.via1.params.get("branch") or ""
    h = request.header("from")
    seed = "%s|%s|%s" % (request.call_id, h.value if h else "", branch)
    suffix = zlib.crc32(seed.encode("utf-8", "surrogateescape"))
    return head + ".%08x" % suffix


_TAG_HEADS = {}


def build_reply(request, code, reason, to_tag, *, source=None, server="kamflat"):
    """The bytes sl_send_reply() sends: status line, the request's Via, From, To,
    Call-ID and CSeq headers copied in their order (Record-Route too for 180..299),
    To tag added when the request has none, the top Via given received=/rport= when
    `source` (ip, port) says so, then Server and Content-Length: 0."""
    out = ["SIP/2.0 %d %s\r\n" % (code, reason)]
    first_via = True
    for h in request.headers:
        key = h.key
        if key == "via" and first_via:
            first_via = False
            out.append(_via1_for_reply(h, request.via1, source))
        elif key in ("via", "from", "call-id", "cseq") or (
                key == "record-route" and 180 <= code < 300):
            out.append(_with_crlf(h.raw))
        elif key == "to" and h is request.header("to") and not request.to.tag and to_tag:
            out.append(_insert_after_value(h, ";tag=" + to_tag))
        elif key == "to":
            out.append(_with_crlf(h.raw))
    if server:
        out.append("Server: %s\r\n" % server)
    out.append("Content-Length: 0\r\n\r\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def _with_crlf(raw):
    return raw if raw.endswith("\n") else raw + "\r\n"


def _value_start(h):
    colon = h.raw.find(":") + 1
    return h.raw.find(h.value, colon) if h.value else colon


def _insert_after_value(h, text):
    """h.raw with `text` inserted right after the header's value."""
    pos = _value_start(h) + len(h.value)
    return _with_crlf(h.raw[:pos] + text + h.raw[pos:])


def _via1_for_reply(h, via, source):
    if source is None:
        source = (via.host, via.port)
    ip, port = source[0], source[1]
    value = h.value[:via.end]
    rest = h.value[via.end:]
    if "rport" in via.params:
        value = re.sub(r";[ \t]*rport(=[0-9]*)?(?=[;, \t\r\n]|\Z)",
                       ";rport=%d" % port, value, count=1, flags=re.I)
    if "rport" in via.params or via.host.strip("[]") != ip:
        value = value.rstrip(" \t\r\n") + ";received=" + (
            "[%s]" % ip if ":" in ip else ip)
    vstart = _value_start(h)
    # Kamailio rebuilds the top Via with a CR LF line end even when the request used LF
    return h.raw[:vstart] + value + rest + "\r\n"
