"""Kamailio's SIP URI parser (parser/parse_uri.c), as a pure function.

$fU/$fd/$tU/$rU... are empty when Kamailio cannot parse the URI, so this follows its
state machine: the host of a URI must be ASCII letters, digits, '.' and '-' (or an
[IPv6] reference), the user part may hold almost anything but '[' and ']', a port has
at most 5 digits. Only user, host and port are kept.
"""
import re
from typing import NamedTuple


class AddrError(ValueError):
    """A name-addr or URI that Kamailio's parser would reject (message says where)."""


class Uri(NamedTuple):
    scheme: str
    user: str
    host: str
    port: str


# Fast path for sip:user@host[:port][;params], checked against the state machine by a
# property test in tests/test_sip.py. Anything else takes the state machine.
# Possessive, so a failing match never backtracks (linear in the input).
_URI_FAST = re.compile(
    r'(sips?):([^@:;?\[\]]++)@([A-Za-z0-9][A-Za-z0-9.-]*+)(?::([0-9]{1,5}+))?+'
    r'(?:;[^@?]*+)?+\Z', re.I)


# --- URI (parse_uri.c) ---------------------------------------------------------------

(URI_INIT, URI_USER, URI_PASSWORD, URI_PASSWORD_ALPHA, URI_HOST, URI_HOST_P,
 URI_HOST6_P, URI_HOST6_END, URI_PORT, URI_PARAM, URI_HEADERS) = range(11)
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HOSTCH = _ALNUM | frozenset(".-")
_DIGITS = frozenset("0123456789")
_SCHEMES = {"sip:": "sip", "sips": "sips", "tel:": "tel", "urn:": "urn"}


def memoised(parse):
    """`parse` with a bounded memo: the same To and URIs come again and again, so the
    last few thousand short values parsed are kept (the results are immutable; values
    that raise are not kept)."""
    seen = {}

    def parse_seen(value):
        parsed = seen.get(value)
        if parsed is None:
            parsed = parse(value)
            if len(value) <= MEMO_MAX_LEN:
                if len(seen) >= MEMO_SIZE:
                    seen.clear()
                seen[value] = parsed
        return parsed
    parse_seen.__doc__ = parse.__doc__
    return parse_seen


MEMO_SIZE = 4096
MEMO_MAX_LEN = 256


def _parse_uri(uri):
    """Split a SIP/SIPS/TEL/URN URI as Kamailio's parse_uri() does, or raise AddrError."""
    m = _URI_FAST.match(uri)
    if m is None:
        return _parse_uri_slow(uri)
    scheme, user, host, port = m.groups()
    return Uri(scheme.lower(), user, host, port or "")


parse_uri = memoised(_parse_uri)


def _parse_uri_slow(uri):
    """parse_uri()'s state machine (parser/parse_uri.c), transliterated. All URI parameters are one state here: Kamailio's
    per-parameter states only record transport/lr/... and share the same transitions
    for '@', ';', '?' and ':'."""
    def fail(why):
        return AddrError("bad URI %r: %s" % (uri, why))

    if len(uri) < 5:
        raise fail("too short")
    scheme = _SCHEMES.get(uri[:4].lower())
    p = 4
    if scheme is None or (scheme == "sips" and uri[4] != ":"):
        raise fail("unknown scheme")
    if scheme == "sips":
        p = 5
    end = len(uri)
    state = URI_INIT
    s = p
    found_user = False
    error_headers = False
    pass_at = None                 # where a ':' that may start a password was seen
    user = host = port = None      # (start, end) spans
    host_start = None              # start of what may turn out to be the user part

    def still_at_user(p):
        nonlocal user, host, port, s, found_user, error_headers, state
        if found_user:
            raise fail("bad char %r" % uri[p])
        user = (host_start, pass_at if pass_at is not None else p)
        host = port = None
        s = p + 1
        found_user = True
        error_headers = False
        state = URI_HOST

    while p < end:
        c = uri[p]
        if state == URI_INIT:
            if c == "[":
                state = URI_HOST6_P
                s = p
            elif c in "]:":
                raise fail("bad char %r" % c)
            else:
                state = URI_USER
        elif state == URI_USER:
            if c == "@":
                user = (s, p)
                state = URI_HOST
                found_user = True
                s = p + 1
            elif c == ":":
                user = (s, p)
                state = URI_PASSWORD
                s = p + 1
            elif c in ";?":
                host_start = s
                host = (s, p)
                state = URI_PARAM if c == ";" else URI_HEADERS
                s = p + 1
            elif c in "[]":
                raise fail("bad char %r" % c)
        elif state in (URI_PASSWORD, URI_PASSWORD_ALPHA):
            if c == "@":
                state = URI_HOST
                found_user = True
                s = p + 1
            elif c in ";?":
                if state == URI_PASSWORD_ALPHA:
                    raise fail("bad port")
                port = (s, p)
                host_start = user[0]
                host, user = user, None
                state = URI_PARAM if c == ";" else URI_HEADERS
                found_user = True
                s = p + 1
            elif c in "[]:":
                raise fail("bad char %r" % c)
            elif c not in _DIGITS:
                state = URI_PASSWORD_ALPHA
        elif state == URI_HOST:
            if c == "[":
                state = URI_HOST6_P
            elif c in _ALNUM:
                state = URI_HOST_P
            else:
                raise fail("bad host")
        elif state in (URI_HOST_P, URI_HOST6_END):
            if c in ":;?":
                host = (s, p)
                state = {":": URI_PORT, ";": URI_PARAM, "?": URI_HEADERS}[c]
                s = p + 1
            elif c in "&@" or state == URI_HOST6_END or c not in _HOSTCH:
                raise fail("bad host")
        elif state == URI_HOST6_P:
            if c == "]":
                state = URI_HOST6_END
            elif c in "[&@;?":
                raise fail("bad host")
        elif state == URI_PORT:
            if c in ";?":
                port = (s, p)
                state = URI_PARAM if c == ";" else URI_HEADERS
                s = p + 1
            elif c not in _DIGITS:
                raise fail("bad port")
        elif state in (URI_PARAM, URI_HEADERS) and c == "@":
            still_at_user(p)
        elif state in (URI_PARAM, URI_HEADERS) and c == ":":
            if not found_user:          # maybe user:password, unless a second ':' comes
                if pass_at is not None:
                    found_user = True
                    pass_at = None
                else:
                    pass_at = p
        elif state == URI_PARAM:
            if c in ";?":
                if pass_at is not None:
                    found_user = True       # a password cannot hold ';' or '?'
                    pass_at = None
                if c == "?":
                    state = URI_HEADERS
                    s = p + 1
        elif state == URI_HEADERS:
            if c == ";":
                if found_user:
                    raise fail("bad char ';'")
                error_headers = True
                if pass_at is not None:
                    raise fail("bad headers")
            elif c == "?" and pass_at is not None:
                found_user = True
                pass_at = None
        p += 1

    if state == URI_INIT:
        raise fail("too short")
    if state == URI_USER:
        if found_user:
            raise fail("bad uri")
        host = (s, p)
    elif state == URI_PASSWORD:
        if found_user:
            raise fail("bad port")
        port = (s, p)
        host, user = user, None
    elif state == URI_PASSWORD_ALPHA:
        if scheme != "urn":
            raise fail("bad port")
        host = (s, p)
    elif state in (URI_HOST_P, URI_HOST6_END):
        host = (s, p)
    elif state in (URI_HOST, URI_HOST6_P):
        raise fail("bad host")
    elif state == URI_PORT:
        port = (s, p)
    elif state == URI_HEADERS and error_headers:
        raise fail("bad headers")

    def text(span):
        return uri[span[0]:span[1]] if span else ""

    if port and port[1] - port[0] > 5:
        raise fail("port too long")
    u, h = text(user), text(host)
    if scheme == "tel":
        u, h = h, ""                 # tel:NUMBER keeps the number as the user
    return Uri(scheme, u, h, text(port))
