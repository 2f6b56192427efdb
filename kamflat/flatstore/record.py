"""Flatstore record encoding: Python values in, one db_flatstore line out (pure, no IO).

The formatting copies Kamailio's km writer (`flat_db_insert` in
src/modules/db_flatstore/km_flatstore.c): one field per value, `|` between fields, `\\n`
after the last. Python types map to km value types:

    None                    NULL       empty field
    bool                    INT        1 / 0
    int                     INT        decimal (any size)
    float                   DOUBLE     C "%f" (6 decimals; inf, -inf, nan, -nan)
    str                     STR        UTF-8; "|" -> "%7C" when encode_delimiter
    bytes, bytearray,
    memoryview              BLOB       "\\xHH" (upper-case hex) for every byte that is not
                                       printable ASCII, and for "\\" and "|"
    datetime.datetime       DATETIME   integer epoch seconds (see datetime_seconds)
    Bigint, Uint, Ubigint,
    Bitmap, Datetime        their km types, range-checked when built
    String                  STRING     UTF-8, "|" written raw even with encode_delimiter

encode_delimiter (Kamailio 5.x, default on) rewrites only the byte "|" inside STR values,
as "%7C"; "%" itself stays raw, as in Kamailio. encode_newlines is kamflat's own option
(off by default): it also writes CR as "%0D" and LF as "%0A" in STR and STRING values, so
a record is always exactly one line.
"""
import datetime
import math
import re

__all__ = [
    "encode_record", "make_encoder", "RecordError",
    "Bigint", "Uint", "Ubigint", "Bitmap", "Datetime", "String",
]


class RecordError(ValueError):
    """A value that cannot be written; the message names its position and what was wrong."""


# ---- wrapper types for the rarer km value types -------------------------------------

class _RangedInt(int):
    """An int that must fit the C type its km type is printed with."""
    low = high = 0
    mask = -1  # what the C printf conversion keeps of the number
    ctype = ""

    def __new__(cls, value):
        number = int(value)
        if not cls.low <= number <= cls.high:
            raise RecordError("%s(%r) is out of range: a %s holds %d..%d"
                              % (cls.__name__, value, cls.ctype, cls.low, cls.high))
        return int.__new__(cls, number & cls.mask)

    def __repr__(self):
        return "%s(%d)" % (type(self).__name__, self)


class Bigint(_RangedInt):
    """DB1_BIGINT, printed with %lld."""
    low, high, ctype = -2**63, 2**63 - 1, "long long"


class Uint(_RangedInt):
    """DB1_UINT, printed with %u."""
    low, high, ctype = 0, 2**32 - 1, "unsigned int"


class Ubigint(_RangedInt):
    """DB1_UBIGINT, printed with %llu."""
    low, high, ctype = 0, 2**64 - 1, "unsigned long long"


class Datetime(_RangedInt):
    """DB1_DATETIME given as epoch seconds; printed as an unsigned integer."""
    low, high, ctype = 0, 2**64 - 1, "time value"


class Bitmap(_RangedInt):
    """DB1_BITMAP: a 32-bit int printed with %u, so Bitmap(-1) is 4294967295."""
    low, high, ctype = -2**31, 2**32 - 1, "32-bit bitmap"
    mask = 0xFFFFFFFF


class String(str):
    """DB1_STRING: Kamailio writes it with "%s", so encode_delimiter leaves its "|" raw."""
    __slots__ = ()


# ---- one converter per km type: value -> field text (without escaping of STR) ---------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_SECOND = datetime.timedelta(seconds=1)


def datetime_seconds(value):
    """Epoch seconds of a datetime, microseconds dropped (time_t has none).

    A naive datetime is local time, as C mktime() reads a struct tm; an aware one is exact.
    Times before 1970 are refused: Kamailio prints DATETIME unsigned, so they would come
    out as huge numbers.
    """
    whole = value.replace(microsecond=0)
    if whole.utcoffset() is None:
        seconds = int(whole.timestamp())
    else:
        seconds = (whole - _EPOCH) // _SECOND
    if seconds < 0:
        raise RecordError("datetime %s is before 1970: DATETIME is written as unsigned "
                          "epoch seconds" % value.isoformat())
    return seconds


def _float_text(value):
    if value != value:  # NaN: glibc prints the sign bit, Python's %f does not
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return "%f" % value


# Printable ASCII except "\" and "|" stays; everything else becomes \xHH (isprint in the
# C locale Kamailio runs in, so bytes >= 0x80 are escaped too).
_BLOB_SPECIAL = re.compile(rb"[^\x20-\x5b\x5d-\x7b\x7d\x7e]")
_BLOB_ESCAPES = {bytes([b]): b"\\x%02X" % b for b in range(256)}


def _blob_text(value):
    escaped = _BLOB_SPECIAL.sub(lambda m: _BLOB_ESCAPES[m.group()], bytes(value))
    return escaped.decode("ascii")


# Resolution order matters: subclasses (the wrappers, bool) before their bases.
_CONVERTERS = (
    (String, str.__str__),
    (bool, lambda value: "1" if value else "0"),
    (int, int.__repr__),           # the wrappers print as plain decimal numbers too
    (float, _float_text),
    (str, str.__str__),
    (bytes, _blob_text),
    (bytearray, _blob_text),
    (memoryview, _blob_text),
    (datetime.datetime, lambda value: repr(datetime_seconds(value))),
    (type(None), lambda value: ""),
)

# Exact type -> converter; the hot path looks up here, subclasses are added on first use.
_BY_TYPE = {kind: convert for kind, convert in _CONVERTERS}


def _converter(value, index):
    for kind, convert in _CONVERTERS:
        if isinstance(value, kind):
            _BY_TYPE[type(value)] = convert
            return convert
    raise RecordError("value %d: cannot write %s %.60r to a flatstore record (use None, "
                      "bool, int, float, str, bytes, datetime or a kamflat.flatstore.record wrapper)"
                      % (index, type(value).__name__, value))


def _field_texts(values):
    """Every value as its field text, with errors naming the value's position."""
    texts = []
    for index, value in enumerate(values):
        convert = _BY_TYPE.get(type(value)) or _converter(value, index)
        try:
            texts.append(convert(value))
        except ValueError as error:  # a RecordError, or e.g. an int too long for str()
            raise RecordError("value %d: %s" % (index, error)) from None
    return texts


# What each option rewrites inside string values: STR gets both, STRING only newlines.
_DELIMITER = (("|", "%7C"),)
_NEWLINES = (("\r", "%0D"), ("\n", "%0A"))


def _escape_fields(values, texts, str_rules, string_rules):
    for index, value in enumerate(values):
        if isinstance(value, str):
            rules = string_rules if isinstance(value, String) else str_rules
            text = texts[index]
            for raw, code in rules:
                if raw in text:
                    text = text.replace(raw, code)
            texts[index] = text
    return texts


def _unencodable(values):
    for index, value in enumerate(values):
        if isinstance(value, str):
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as error:
                return RecordError("value %d: not encodable as UTF-8: %s" % (index, error))
    return RecordError("record not encodable as UTF-8")


# Records longer than this always take the general path (bounds what an encoder learns).
MAX_LEARNED_FIELDS = 255

# The fast path takes these; anything else (an iterator, a str or bytes given where a
# record belongs, a list subclass) goes the general way.
_PLAIN_RECORDS = frozenset((list, tuple))


def make_encoder(encode_delimiter=True, encode_newlines=False):
    """Return `encode(values) -> bytes` for one set of options (a writer keeps one).

    Records of one table have one length and mostly str values, with numbers or None at
    the same few places. So the encoder remembers, per record length, the positions that
    held a non-str value so far. The fast path converts only those positions and lets
    "|".join() check the rest are str (it raises TypeError otherwise); converted fields
    never contain "|", CR or LF, so one count over the joined line tells whether a str
    value needs escaping. Anything else (a new length, a non-str value somewhere new, an
    unknown type, a bad value, a string to escape, a surrogate) takes the general path,
    which converts every value, names a bad one by position, escapes, and remembers the
    positions.
    """
    str_rules = (_DELIMITER if encode_delimiter else ()) + (_NEWLINES if encode_newlines else ())
    string_rules = _NEWLINES if encode_newlines else ()
    converted = {}  # record length -> positions where non-str values were seen (a tuple)

    def encode_general(values):
        if isinstance(values, (str, bytes, bytearray)):
            raise RecordError("a record is a sequence of values, not a %s: %.60r"
                              % (type(values).__name__, values))
        if not hasattr(values, "__len__"):
            values = tuple(values)  # an iterator: it is walked more than once below
        texts = _field_texts(values)
        count = len(texts)
        if count <= MAX_LEARNED_FIELDS:
            seen = {i for i, value in enumerate(values) if value.__class__ is not str}
            converted[count] = tuple(sorted(seen.union(converted.get(count, ()))))
        line = "|".join(_escape_fields(values, texts, str_rules, string_rules))
        try:
            return (line + "\n").encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise _unencodable(values) from None

    def encode(values):
        if values.__class__ not in _PLAIN_RECORDS:
            return encode_general(values)
        fields = [*values]
        try:
            for i in converted[len(fields)]:
                value = fields[i]
                # An int is by far the most common; f"{}" formats it without a call.
                fields[i] = f"{value}" if value.__class__ is int else _BY_TYPE[value.__class__](value)
            line = "|".join(fields)
        except (KeyError, TypeError, ValueError):  # incl. RecordError
            return encode_general(values)
        if ((encode_delimiter and line.count("|") != len(fields) - 1)
                or (encode_newlines and ("\n" in line or "\r" in line))):
            return encode_general(values)
        try:
            return (line + "\n").encode()  # strict UTF-8 is the quickest call
        except UnicodeEncodeError:
            return encode_general(values)  # a surrogate: surrogateescape or a named error

    return encode


_ENCODERS = {(d, n): make_encoder(d, n) for d in (False, True) for n in (False, True)}


def encode_record(values, encode_delimiter=True, encode_newlines=False):
    """One flatstore line for `values` (a sequence), including the trailing newline.

    Raises RecordError (a ValueError) naming the position of a value that cannot be
    written; nothing is partially encoded.
    """
    return _ENCODERS[bool(encode_delimiter), bool(encode_newlines)](values)
