"""The pseudo-variables acc's db_extra may name, evaluated against a parsed request.

Pure. `parse_db_extra("src_user=$fU;src_domain=$fd")` -> [("src_user", "$fU"), ...];
`evaluate("$fU", request, source)` -> str, or None where Kamailio's value is unset
(acc writes unset values as empty strings with acc_extra_nullable=0).

Values follow Kamailio 5.6's pv module: $fU/$fd/$tU/$td/$rU/$rd are unset when the
URI does not parse or the part is empty; $fn keeps the quotes of a quoted display name;
header values keep folding as sent.
"""
import re

from kamflat.proto.sip import SipError, header_key
from kamflat.proto.sipuri import AddrError, Uri, parse_uri

SUPPORTED = ("$fU", "$fd", "$fn", "$fu", "$tU", "$td", "$tu", "$ru", "$rU", "$rd",
             "$ci", "$cs", "$ua", "$si", "$sp", "$rm", "$hdr(Name)")


class PvarError(ValueError):
    """A db_extra definition kamflat cannot evaluate; the message names the bad part."""


_HDR_RE = re.compile(r"\$hdr\(([A-Za-z0-9.!%*_+`'~-]+)\)\Z")
_COLUMN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_pvar(spec):
    """Raise PvarError unless `spec` is a pseudo-variable evaluate() knows."""
    if spec in SUPPORTED[:-1] or _HDR_RE.match(spec):
        return spec
    raise PvarError("unsupported pseudo-variable %r (supported: %s)"
                    % (spec, " ".join(SUPPORTED)))


def parse_db_extra(text, check=True):
    """Split acc's db_extra ("col=$pv;col2=$pv2") into [(column, pvar)].

    With check, every pvar must be one evaluate() knows (the SIP front end needs that;
    records sent in ready-made only need the columns). Raises PvarError naming the part
    that is wrong; the one parser of db_extra (flatstore readers take its columns)."""
    pairs = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        column, eq, spec = part.partition("=")
        column, spec = column.strip(), spec.strip()
        if not eq or not column or not spec:
            raise PvarError("db_extra: bad part %r (expected column=$pvar)" % part)
        if not _COLUMN_RE.match(column):
            raise PvarError("db_extra: bad column name %r in %r" % (column, part))
        try:
            if check:
                check_pvar(spec)
        except PvarError as e:
            raise PvarError("db_extra: %s in %r" % (e, part)) from None
        pairs.append((column, spec))
    return pairs


def _from(request):
    try:
        return request.from_addr()
    except SipError:
        return None


def _from_uri(request):
    try:
        return request.from_addr().uri
    except SipError:
        return None


_URI_OF = {"from": _from_uri, "to": lambda r: r.to.uri, "ruri": lambda r: r.uri}


def _uri_part(which, part):
    """An evaluator of the user or host of the From, To or Request URI (the URI parsed
    once per request, None when it does not parse)."""
    index = Uri._fields.index(part)
    uri_of = _URI_OF[which]

    def evaluate(request, source):
        cache = request.cache
        parsed = cache.get(which, cache)           # the cache itself: not parsed yet
        if parsed is cache:
            uri = uri_of(request)
            try:
                parsed = parse_uri(uri) if uri is not None else None
            except AddrError:
                parsed = None
            cache[which] = parsed
        return (parsed[index] or None) if parsed else None
    return evaluate


def _header(request, key):
    h = request.header(key)
    return h.value if h is not None else None


_EVALUATORS = {
    "$fU": _uri_part("from", "user"),
    "$fd": _uri_part("from", "host"),
    "$fn": lambda r, s: (_from(r).display or None) if _from(r) else None,
    "$fu": lambda r, s: _from(r).uri if _from(r) else None,
    "$tU": _uri_part("to", "user"),
    "$td": _uri_part("to", "host"),
    "$tu": lambda r, s: r.to.uri,
    "$ru": lambda r, s: r.uri,
    "$rU": _uri_part("ruri", "user"),
    "$rd": _uri_part("ruri", "host"),
    "$ci": lambda r, s: r.call_id,
    "$cs": lambda r, s: r.cseq_num,
    "$ua": lambda r, s: _header(r, "user-agent"),
    "$si": lambda r, s: s[0] if s else None,
    "$sp": lambda r, s: str(s[1]) if s else None,
    "$rm": lambda r, s: r.method,
}


def evaluator(spec):
    """A function (request, source) -> str | None for one pseudo-variable."""
    check_pvar(spec)
    if spec in _EVALUATORS:
        return _EVALUATORS[spec]
    key = header_key(_HDR_RE.match(spec).group(1))
    return lambda r, s: _header(r, key)


def evaluate(spec, request, source=None):
    """The value of one pseudo-variable: str, or None when Kamailio's would be unset."""
    return evaluator(spec)(request, source)
