"""kamflat.flatstore.reader: flatstore lines back to values, table files, merging (pure tables + tmp files)."""
import gzip
import os

import pytest
from hypothesis import given, settings, strategies as st

from kamflat.acc import pv
from kamflat.flatstore import opening, reader
from conftest import DATA

READER_DATA = DATA / "reader"   # acc files written by Kamailio 5.6.3 (conformance/acc_sip)
EXTRA = ["src_user", "src_domain", "dst_ouser"]  # that server's db_extra

SPLIT_CASES = [
    # (bytes fed, whole records, pending)
    (b"", [], b""),
    (b"INVITE|a", [], b"INVITE|a"),
    (b"a|b\n", [b"a|b"], b""),
    (b"a|b\nc|d\ne", [b"a|b", b"c|d"], b"e"),
    (b"\n", [b""], b""),
    # a folded header: CR LF + whitespace stays inside one record
    (b"BYE|x||foo\r\n bar%7Cbaz|plain\nnext\n", [b"BYE|x||foo\r\n bar%7Cbaz|plain", b"next"], b""),
    (b"a\r\n\tb\n", [b"a\r\n\tb"], b""),
    # CR LF not followed by whitespace is two records
    (b"a\r\nb\n", [b"a\r", b"b"], b""),
]


@pytest.mark.parametrize("data,records,pending", SPLIT_CASES)
def test_record_splitter(data, records, pending):
    splitter = reader.RecordSplitter()
    splitter.feed(data)
    assert splitter.records() == records
    assert splitter.pending == pending


def test_record_splitter_fed_byte_by_byte_holding_cr_lines_matches_whole_feed():
    data = b"".join(case[0] for case in SPLIT_CASES if case[0].endswith(b"\n"))
    splitter, got = reader.RecordSplitter(), []
    for i in range(len(data)):
        splitter.feed(data[i:i + 1])
        got.extend(splitter.records(hold_cr=True))
    got.extend(splitter.records())
    assert got == reader.split_records(data)
    assert b"BYE|x||foo\r\n bar%7Cbaz|plain" in got


def test_hold_cr_keeps_back_only_a_last_cr_line():
    splitter = reader.RecordSplitter()
    splitter.feed(b"a|1\nb|foo\r\n")
    assert splitter.records(hold_cr=True) == [b"a|1"]
    splitter.feed(b" bar|2\nc\r\n")
    assert splitter.records(hold_cr=True) == [b"b|foo\r\n bar|2"]
    assert splitter.records() == [b"c\r"]
    assert splitter.pending == b""


PARSE_CASES = [
    (b"INVITE|ft-1||call-1|200|OK|1795763336", False,
     ["INVITE", "ft-1", "", "call-1", "200", "OK", "1795763336"]),
    (b"INVITE|ft%7C3||call%7Cpipe%7C3", False, ["INVITE", "ft%7C3", "", "call%7Cpipe%7C3"]),
    (b"INVITE|ft%7C3||call%7Cpipe%7C3", True, ["INVITE", "ft|3", "", "call|pipe|3"]),
    # `%` is not escaped by Kamailio: "a%7Cb" sent literally decodes to "a|b" (ambiguous)
    (b"a%7Cb|c%25d", True, ["a|b", "c%25d"]),
    ("用户|ü".encode(), False, ["用户", "ü"]),
    (b"", False, [""]),
    (b"|", False, ["", ""]),
]


@pytest.mark.parametrize("raw,decode,values", PARSE_CASES)
def test_parse_record(raw, decode, values):
    assert reader.parse_record(raw, decode=decode) == values


def test_parse_record_keeps_non_utf8_bytes_losslessly():
    values = reader.parse_record(b"\xff\xfe|ok")
    assert values[1] == "ok"
    assert values[0].encode("utf-8", "surrogateescape") == b"\xff\xfe"


@pytest.mark.parametrize("spec,names", [
    ("src_user=$fU;src_domain=$fd;dst_ouser=$tU", ["src_user", "src_domain", "dst_ouser"]),
    (" ua = $hdr(User-Agent) ; ", ["ua"]),
    ("", []),
    (None, []),
])
def test_parse_db_extra(spec, names):
    # the one parser of db_extra; the readers take its column names
    assert [column for column, _ in pv.parse_db_extra(spec or "", check=False)] == names


def test_parse_db_extra_rejects_item_without_name():
    with pytest.raises(ValueError, match="'\\$fU'"):
        pv.parse_db_extra("$fU", check=False)


@pytest.mark.parametrize("values,record", [
    (["INVITE", "a"], {"method": "INVITE", "from_tag": "a"}),
    (["BYE", "f", "t", "c", "200", "OK", "1", "x", "y"],
     {"method": "BYE", "from_tag": "f", "to_tag": "t", "callid": "c", "sip_code": "200",
      "sip_reason": "OK", "time": "1", "src_user": "x", "_extra": ["y"]}),
])
def test_name_values(values, record):
    assert reader.name_values(values, reader.acc_columns(["src_user"])) == record


FILE_NAME_CASES = [
    # (name, rotated wanted, expected (number, suffix) or None)
    ("acc_129.log", False, (129, "")),
    ("acc_1.log", False, (1, "")),
    ("acc_129.log.1", False, None),
    ("acc_129.log.1", True, (129, ".1")),
    ("acc_129.log-20260101", True, (129, "-20260101")),
    ("acc_129.log.old", True, (129, ".old")),
    ("acc_129.log.2.gz", True, (129, ".2.gz")),
    ("missed_calls_130.log", False, None),   # another table
    ("acc_x_129.log", False, None),
    ("acc_.log", False, None),
    ("acc_129.txt", True, None),
    ("xacc_129.log", True, None),
]


@pytest.mark.parametrize("name,rotated,expected", FILE_NAME_CASES)
def test_match_table_file(name, rotated, expected):
    found = reader.match_table_file(name, "acc", rotated)
    assert (found and (found.number, found.suffix)) == (expected or None)


def test_table_names_with_underscores_and_regex_characters():
    assert reader.match_table_file("missed_calls_130.log", "missed_calls").number == 130
    assert reader.match_table_file("a.c_129.log", "a.c").number == 129
    assert reader.match_table_file("abc_129.log", "a.c") is None


@pytest.mark.parametrize("suffix,compression", [
    ("", ""), (".1", ""), (".1.gz", ".gz"), ("-20260101.bz2", ".bz2"), (".xz", ".xz"),
    (".1.zst", "unreadable")])
def test_compression(suffix, compression):
    assert reader.TableFile("acc_129.log" + suffix, 129, suffix).compression == compression


def test_select_table_files_orders_live_by_number_then_rotated():
    names = ["acc_131.log", "acc_129.log.1", "acc_130.log", "acc_2.log", "other", "acc_129.log"]
    assert [f.name for f in reader.select_table_files(names, "acc")] == [
        "acc_2.log", "acc_129.log", "acc_130.log", "acc_131.log"]
    assert [f.name for f in reader.select_table_files(names, "acc", rotated=True)][-1] == \
        "acc_129.log.1"


def test_read_table_merges_kamailio_files_by_time():
    records = list(reader.read_table(READER_DATA, "acc", time_index=6))
    expected = sum(len(p.read_bytes().splitlines()) for p in READER_DATA.glob("acc_*.log"))
    assert len(records) == expected
    times = [int(reader.parse_record(r.raw)[6]) for r in records]
    assert times == sorted(times)
    # the timer process's 408 (time ...338) is last; the folded-in ties keep file order
    assert reader.parse_record(records[-1].raw)[4:6] == ["408", "Request Timeout"]
    named = [reader.name_values(reader.parse_record(r.raw, decode=True), reader.acc_columns(EXTRA))
             for r in records]
    pipe = [r for r in named if r["callid"] == "call|pipe|3"]
    assert pipe and pipe[0]["dst_ouser"] == "to|user" and pipe[0]["from_tag"] == "ft|3"


def test_merge_is_stable_and_keeps_untimed_records_in_place(tmp_path):
    (tmp_path / "acc_129.log").write_bytes(b"A|1||c||x|10\nA|2||c||x|bad\nA|3||c||x|30\n")
    (tmp_path / "acc_130.log").write_bytes(b"B|1||c||x|10\nB|2||c||x|20\n")
    got = [r.raw.split(b"|")[:2] for r in reader.read_table(tmp_path, "acc", time_index=6)]
    assert got == [[b"A", b"1"], [b"A", b"2"], [b"B", b"1"], [b"B", b"2"], [b"A", b"3"]]
    unmerged = [r.raw[:3] for r in reader.read_table(tmp_path, "acc")]
    assert unmerged == [b"A|1", b"A|2", b"A|3", b"B|1", b"B|2"]


def test_rotated_files_plain_and_compressed_are_read_only_when_asked(tmp_path):
    (tmp_path / "acc_129.log").write_bytes(b"live|1\n")
    (tmp_path / "acc_129.log.1").write_bytes(b"plain|1\n")
    with gzip.open(tmp_path / "acc_129.log.2.gz", "wb") as f:
        f.write(b"gz|1\ngz|2\n")
    (tmp_path / "acc_129.log.3.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    os.utime(tmp_path / "acc_129.log.2.gz", (1, 1))  # the oldest
    os.utime(tmp_path / "acc_129.log.1", (2, 2))
    assert [r.raw for r in reader.read_table(tmp_path, "acc")] == [b"live|1"]
    got = [(r.raw, r.file) for r in reader.read_table(tmp_path, "acc", rotated=True)]
    assert got == [(b"gz|1", "acc_129.log.2.gz"), (b"gz|2", "acc_129.log.2.gz"),
                   (b"plain|1", "acc_129.log.1"), (b"live|1", "acc_129.log")]


def test_folded_record_across_a_read_chunk_boundary_stays_whole(tmp_path):
    first = b"INVITE|" + b"x" * (65536 - len(b"INVITE|") - 2) + b"\r\n"   # ends the 1st chunk
    (tmp_path / "acc_129.log").write_bytes(first + b" folded|1\nnext|2\n")
    assert [r.raw for r in reader.read_table(tmp_path, "acc")] == [
        first[:-1] + b"\n folded|1", b"next|2"]


def test_torn_last_line_is_still_returned(tmp_path):
    (tmp_path / "acc_129.log").write_bytes(b"a|1\nINVITE|lt139323||f")
    assert [r.raw for r in reader.read_table(tmp_path, "acc")] == [b"a|1", b"INVITE|lt139323||f"]


def _heapq_order(directory, table, time_index):
    """The order read_table promises: heapq.merge over (time key, file, line) of every
    record, a record without a number in its time column taking its predecessor's key."""
    import heapq
    files = reader.list_table_files(directory, table)

    def keyed(order, f):
        key = 0
        for line, record in enumerate(reader.read_table_file(directory, f)):
            key = reader.time_key(record.raw, time_index, key)
            yield key, order, line, record
    return [r for *_, r in heapq.merge(*(keyed(i, f) for i, f in enumerate(files)))]


_TIMES = st.one_of(st.integers(0, 6).map(str), st.sampled_from(["x", "", " 3", "9_9"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(_TIMES, st.booleans()), max_size=40), min_size=1,
                max_size=4),
       st.sampled_from([1 << 20, 64, 7]))
def test_merge_runs_keep_heapq_merge_order(tmp_path_factory, files, read_size):
    """Files in and out of time order, ties, bad times, short and folded records, read in
    small chunks too: the runs read_table_chunks gives are heapq.merge's order."""
    directory = tmp_path_factory.mktemp("merge")
    for n, records in enumerate(files):
        lines = [b"INVITE|f%d|%d|%s%s|r" % (n, i, t.encode(), b"\r\n x" if fold else b"")
                 if t != "" else b"short" for i, (t, fold) in enumerate(records)]
        (directory / ("acc_%d.log" % (129 + n))).write_bytes(b"".join(l + b"\n" for l in lines))
    old = reader.READ_SIZE
    reader.READ_SIZE = read_size
    try:
        got = list(reader.read_table(directory, "acc", time_index=3))
        want = _heapq_order(directory, "acc", 3)
    finally:
        reader.READ_SIZE = old
    assert got == want


GZIP_CASES = {
    "one member": [b"a|1\n" * 5000],
    "two members": [b"a|1\n" * 3000, b"b|2\n"],
    "zero padding after a member": [b"a|1\n" * 100, b"\0" * 512],
    "padding, then another member": [b"a|1\n" * 100, b"\0\0", b"c|3\n"],
    "empty file": [],
}


@pytest.mark.parametrize("case", sorted(GZIP_CASES))
@pytest.mark.parametrize("output", [7, 4096, opening.GZIP_OUTPUT])
def test_gzip_inflater_reads_what_gzip_reads(tmp_path, monkeypatch, case, output):
    """The .gz reader (zlib alone, big reads on a worker thread) against the gzip module,
    with output limits that cut inside records and inside members."""
    data = b"".join(part if part.startswith(b"\0") else gzip.compress(part)
                    for part in GZIP_CASES[case])
    monkeypatch.setattr(opening, "GZIP_OUTPUT", output)
    (tmp_path / "acc_129.log.1.gz").write_bytes(data)
    got = [r.raw for r in reader.read_table(tmp_path, "acc", rotated=True)]
    expected = gzip.decompress(data).split(b"\n")[:-1] if data else []
    assert got == expected


def test_damaged_gzip_raises_naming_the_file_after_its_whole_records(tmp_path):
    data = gzip.compress(b"".join(b"rec|%d\n" % n for n in range(50000)))
    (tmp_path / "acc_129.log.1.gz").write_bytes(data[:len(data) // 2])
    got = []
    with pytest.raises(reader.DamagedFileError) as raised:
        for record in reader.read_table(tmp_path, "acc", rotated=True):
            got.append(record.raw)
    assert raised.value.path == str(tmp_path / "acc_129.log.1.gz")
    assert "end-of-stream marker" in str(raised.value)
    assert got and got == [b"rec|%d" % n for n in range(len(got))]   # whole, in order
    # a changed byte in the middle: zlib finds the damage (or the CRC does), never silence
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    (tmp_path / "acc_129.log.1.gz").write_bytes(bytes(bad))
    with pytest.raises(reader.DamagedFileError):
        list(reader.read_table(tmp_path, "acc", rotated=True))
