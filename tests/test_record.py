"""Record encoding: byte-exact table per km type, options, and the recorded Kamailio 5.6 files."""
import base64
import datetime
import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import DATA
from kamflat.flatstore.record import (Bigint, Bitmap, Datetime, RecordError, String, Ubigint, Uint,
                            encode_record, make_encoder)

UTC = datetime.timezone.utc
EIGHT_K = "x" * 8192

# (values, expected line) with the defaults: encode_delimiter=1, encode_newlines=0.
DEFAULT_CASES = [
    (["INVITE", "ft-1", "", "call-1", "200", "OK", 1795763336],
     b"INVITE|ft-1||call-1|200|OK|1795763336\n"),
    ([None], b"\n"),
    ([], b"\n"),
    (["", None, ""], b"||\n"),                        # empty string and NULL look the same
    (["a|b"], b"a%7Cb\n"),
    (["|"], b"%7C\n"),
    (["||x||"], b"%7C%7Cx%7C%7C\n"),
    (["a%7Cb", "100%"], b"a%7Cb|100%\n"),             # "%" is never escaped
    (["back\\slash", 'q"uote', "t\tab"], b'back\\slash|q"uote|t\tab\n'),
    (["fold\r\n bar|baz"], b"fold\r\n bar%7Cbaz\n"),    # CR/LF raw, as Kamailio 5.6
    (["j\u00fcrgen", "\u7528\u6237"], "j\u00fcrgen|\u7528\u6237\n".encode()),
    (["nul\x00inside"], b"nul\x00inside\n"),
    ([EIGHT_K, EIGHT_K + "|"], (EIGHT_K + "|" + EIGHT_K + "%7C\n").encode()),
    ([0, -1, 2**31, -2**63, 10**30], b"0|-1|2147483648|-9223372036854775808|" + b"1" + b"0" * 30 + b"\n"),
    ([True, False], b"1|0\n"),
    # floats: C printf "%f" as checked against glibc (inf, -inf, nan, -nan, -0.0)
    ([0.0, -0.0, 1.5, 0.1, 123.4567895, -1.0000005, 1e-7],
     b"0.000000|-0.000000|1.500000|0.100000|123.456789|-1.000001|0.000000\n"),
    ([float("inf"), float("-inf"), float("nan"), -float("nan")], b"inf|-inf|nan|-nan\n"),
    ([9007199254740993.0, 1e22], b"9007199254740992.000000|10000000000000000000000.000000\n"),
    # blobs: \xHH upper case for non-printable, backslash and "|"; everything else raw
    ([b"plain text ~{}[]"], b"plain text ~{}[]\n"),
    ([b"a|b\\c"], b"a\\x7Cb\\x5Cc\n"),
    ([b"\x00\x01\x1f\x7f\x80\xff\r\n"], b"\\x00\\x01\\x1F\\x7F\\x80\\xFF\\x0D\\x0A\n"),
    ([bytearray(b"%|"), memoryview(b"\t")], b"%\\x7C|\\x09\n"),
    ([b""], b"\n"),
    ([b"\xc3\xbc"], b"\\xC3\\xBC\n"),
    # datetimes: aware ones exactly, fractions of a second dropped
    ([datetime.datetime(2026, 11, 16, 8, 28, 56, 999999, tzinfo=UTC)], b"1794817736\n"),
    ([datetime.datetime(2026, 11, 16, 9, 28, 56, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))],
     b"1794817736\n"),
    ([datetime.datetime(1970, 1, 1, tzinfo=UTC)], b"0\n"),
    # the wrappers
    ([Bigint(-2**63), Bigint(2**63 - 1)], b"-9223372036854775808|9223372036854775807\n"),
    ([Uint(2**32 - 1), Ubigint(2**64 - 1)], b"4294967295|18446744073709551615\n"),
    ([Bitmap(-1), Bitmap(5), Bitmap(-2**31)], b"4294967295|5|2147483648\n"),
    ([Datetime(1795763336)], b"1795763336\n"),
    ([String("raw|pipe"), "esc|aped"], b"raw|pipe|esc%7Caped\n"),
    ([String("a\nb")], b"a\nb\n"),
]


@pytest.mark.parametrize("values, expected", DEFAULT_CASES)
def test_default_encoding(values, expected):
    assert encode_record(values) == expected
    encode = make_encoder()
    # The first call takes the general path, the second the fast one for this length.
    assert [encode(values), encode(values)] == [expected, expected]


# (values, encode_delimiter, encode_newlines, expected)
OPTION_CASES = [
    (["a|b", "c"], False, False, b"a|b|c\n"),              # Kamailio 3.x: raw, columns break
    (["a|b"], False, True, b"a|b\n"),
    (["a\r\nb", "c\nd|e"], True, True, b"a%0D%0Ab|c%0Ad%7Ce\n"),
    (["a\r\nb|c"], False, True, b"a%0D%0Ab|c\n"),
    ([String("s|\r\n")], True, True, b"s|%0D%0A\n"),        # STRING: newlines only
    ([String("s|\r\n")], False, False, b"s|\r\n\n"),
    (["%0A"], True, True, b"%0A\n"),                         # "%" still raw
    ([b"\r\n|"], False, True, b"\\x0D\\x0A\\x7C\n"),          # blobs are always escaped
    ([1, None, "x\ny"], True, True, b"1||x%0Ay\n"),
]


@pytest.mark.parametrize("values, delimiter, newlines, expected", OPTION_CASES)
def test_options(values, delimiter, newlines, expected):
    assert encode_record(values, encode_delimiter=delimiter, encode_newlines=newlines) == expected
    encode = make_encoder(delimiter, newlines)
    assert [encode(values), encode(values)] == [expected, expected]


def test_naive_datetime_is_local_time_like_mktime():
    naive = datetime.datetime(2026, 7, 1, 12, 30, 15, 500000)
    assert encode_record([naive]) == b"%d\n" % int(time.mktime(naive.timetuple()))


def test_same_values_through_the_hot_path_and_the_general_path():
    """The encoder learns where non-str values sit; a record that breaks the pattern
    (None, a str where an int was, a new type) must still come out right."""
    encode = make_encoder()
    records = [
        ["INVITE", 200, "a|b", 1795763336],
        ["BYE", 486, "plain", 1795763337],
        ["BYE", "486", None, 1.5],
        [None, 1, "x", 2],
        ["A", True, b"|", String("|")],
        ["A", 7, "b", Bitmap(-1)],
    ]
    expected = [b"INVITE|200|a%7Cb|1795763336\n", b"BYE|486|plain|1795763337\n",
                b"BYE|486||1.500000\n", b"|1|x|2\n", b"A|1|\\x7C||\n", b"A|7|b|4294967295\n"]
    for _round in range(2):
        assert [encode(record) for record in records] == expected


def test_any_iterable_of_values():
    assert encode_record(iter(["a|b", 1])) == b"a%7Cb|1\n"
    assert encode_record(("x", None)) == b"x|\n"


@pytest.mark.parametrize("values, message", [
    ([1, object()], "value 1: cannot write object"),
    (["a", {"b": 1}], "value 1: cannot write dict"),
    ([datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)], "value 0: datetime 1969-12-31T23:59:59+00:00 is before 1970"),
    (["ok", "bad \ud800 surrogate"], "value 1: not encodable as UTF-8"),
    ([10 ** 5000], "value 0: "),
    ("INVITE", "a record is a sequence of values, not a str: 'INVITE'"),
    (b"INVITE", "a record is a sequence of values, not a bytes"),
])
def test_bad_values_are_named_by_position(values, message):
    encode_record(["x"] * len(values))   # a record of the same length seen before
    with pytest.raises(RecordError) as caught:
        encode_record(values)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("whole", [b"INVITE", bytearray(b"INVITE"), "INVITE", String("INVITE")])
def test_a_whole_str_or_bytes_is_refused_even_after_an_all_number_record(whole):
    encode = make_encoder()
    assert encode([1, 2, 3, 4, 5, 6]) == encode([1, 2, 3, 4, 5, 6]) == b"1|2|3|4|5|6\n"
    with pytest.raises(RecordError, match="a record is a sequence of values, not a"):
        encode(whole)


@pytest.mark.parametrize("make, value", [
    (Bigint, 2**63), (Bigint, -2**63 - 1), (Uint, -1), (Uint, 2**32),
    (Ubigint, 2**64), (Bitmap, 2**32), (Bitmap, -2**31 - 1), (Datetime, -1),
])
def test_wrappers_refuse_values_their_c_type_cannot_hold(make, value):
    with pytest.raises(RecordError, match="%s\\(%d\\) is out of range" % (make.__name__, value)):
        make(value)


def test_surrogateescape_round_trips_undecodable_bytes():
    raw = b"caf\xe9"
    for _general_then_fast_path in range(2):
        assert encode_record([raw.decode("utf-8", "surrogateescape"), 1]) == b"caf\xe9|1\n"


# ---- the recorded Kamailio 5.6.3 acc files ------------------------------------------

ACC_SIP = DATA / "acc_sip"
TIME_COLUMN, CODE_COLUMN, REASON_COLUMN = 6, 4, 5


def sent_requests():
    with open(ACC_SIP / "sip_sent.json") as f:
        return [base64.b64decode(case["request_b64"]).decode("utf-8", "surrogateescape")
                for case in json.load(f)]


def original_value(field, requests):
    """The value Kamailio was given: a "%7C" in the file is a "|" that was encoded, unless
    the request itself carried the literal text "%7C" (the percent_literal case)."""
    if "%7C" not in field or any(field in request for request in requests):
        return field
    with_pipe = field.replace("%7C", "|")
    assert any(with_pipe in request for request in requests), field
    return with_pipe


def recorded_records():
    requests = sent_requests()
    for path in sorted(ACC_SIP.glob("*.log")):
        for line in path.read_bytes().splitlines(keepends=True):
            fields = line[:-1].decode("utf-8", "surrogateescape").split("|")
            values = [original_value(field, requests) for field in fields]
            values[TIME_COLUMN] = int(values[TIME_COLUMN])   # acc writes the time as a number
            for index, value in enumerate(values):
                if value and index not in (CODE_COLUMN, REASON_COLUMN, TIME_COLUMN):
                    assert any(value in request for request in requests), (path.name, value)
            yield path.name, values, line


RECORDED = list(recorded_records())


def test_recorded_files_were_found_and_include_encoded_pipes():
    assert len(RECORDED) >= 10
    assert any("|" in value for _name, values, _line in RECORDED for value in values
               if isinstance(value, str))


@pytest.mark.parametrize("name, values, line", RECORDED,
                         ids=["%s:%d" % (r[0], i) for i, r in enumerate(RECORDED)])
def test_recorded_kamailio_line(name, values, line):
    assert encode_record(values) == line
    raw = "|".join(str(value) for value in values) + "\n"    # Kamailio 3.x: no escaping
    assert encode_record(values, encode_delimiter=False) == raw.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("count", [1, 255, 256, 1000])
def test_records_of_any_length(count):
    values = [i if i % 3 == 0 else None if i % 3 == 1 else "s|%d" % i for i in range(count)]
    expected = "|".join(str(i) if i % 3 == 0 else "" if i % 3 == 1 else "s%%7C%d" % i
                        for i in range(count)) + "\n"
    encode = make_encoder()
    assert encode(values) == encode(values) == expected.encode()


# ---- property: both paths agree with a plain per-value reference ---------------------


def reference_field(value, delimiter, newlines):
    """Straight from Kamailio's flat_db_insert, one value at a time."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, bytes):
        return b"".join(bytes([b]) if 0x20 <= b < 0x7F and b not in b"\\|"
                        else b"\\x%02X" % b for b in value)
    data = value.encode("utf-8", "surrogateescape")
    if delimiter:
        data = data.replace(b"|", b"%7C")
    if newlines:
        data = data.replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    return data


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.binary(max_size=20),
                   st.text(alphabet=st.sampled_from("ab|%\\\r\n\u00fc\u7528 \t"), max_size=20))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=6),
       st.booleans(), st.booleans())
def test_fast_and_general_paths_match_a_per_value_reference(records, delimiter, newlines):
    encode = make_encoder(delimiter, newlines)   # records of one length share a shape
    for values in records + records:
        expected = b"|".join(reference_field(v, delimiter, newlines) for v in values) + b"\n"
        assert encode(values) == expected
