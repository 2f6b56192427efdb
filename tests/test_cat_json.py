"""`kamflat cat --json` writes runs of records from templates when it can: the bytes must
be what json.dumps gives for each record (Printer.write, the general way)."""
import io
from types import SimpleNamespace

from hypothesis import assume, given, settings, strategies as st

from kamflat.flatstore import reader
from kamflat.tools.cat import Printer

_FIELD = st.lists(st.sampled_from(["a", "7", "%7C", "%", "\u00fc", '"', "\\", "\t", "\r",
                                   " ", "{", "%s", "x"]), max_size=4).map("".join)
_RECORD = st.lists(_FIELD, min_size=1, max_size=5).map(
    lambda values: "|".join(values).encode("utf-8"))


def _printer(keys, decode):
    args = SimpleNamespace(json=True, decode=decode)
    printer = Printer(args, SimpleNamespace(table="acc", keys=keys))
    printer.out = io.BytesIO()
    return printer


@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD | st.just(b"\xff|x"), min_size=1, max_size=6),
       st.sampled_from([[], ["a", "b"], ["a", "b", "c", "d"], ["k%", "a"], ["a", "a"],
                        ["_extra"]]),
       st.booleans(), st.sampled_from(["acc_129.log", "acc_1%d.log.1", "acc_129.log.\udcff"]))
def test_runs_print_what_json_dumps_gives(records, keys, decode, file_name):
    fast, slow = _printer(keys, decode), _printer(keys, decode)
    fast.write_records(records, file_name)
    for raw in records:
        slow.write(raw, file_name)
    assert fast.out.getvalue() == slow.out.getvalue()


def test_uniform_and_mixed_runs():
    records = [b"INVITE|a|b", b"BYE|c|d"]
    for run in (records, records + [b"x"]):
        fast, slow = _printer(["m", "t"], False), _printer(["m", "t"], False)
        fast.write_records(run, "acc_129.log")
        for raw in run:
            slow.write(raw, "acc_129.log")
        assert fast.out.getvalue() == slow.out.getvalue()
        assert fast.out.getvalue().count(b"\n") == len(run)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.lists(st.sampled_from(["1", "22", "x", " 3", "9_9", "", "\u00fc"]),
                                  min_size=1, max_size=4).map("|".join).map(str.encode),
                         min_size=1, max_size=5), min_size=1, max_size=3),
       st.integers(0, 3), st.booleans())
def test_json_chunks_carry_the_time_keys_of_the_records(chunks, time_index, json):
    """cat --json takes the time keys from its own split of the fields: they are
    reader.time_keys's, chunk after chunk."""
    printer = _printer(["a", "b", "c", "d"][:time_index + 1], False)
    printer.json = json
    got = list(printer.chunks(map(b"\n".join, chunks), "acc_129.log", time_index))
    want = list(reader.keyed_chunks(iter(chunks), time_index))
    assert [keys for _, keys in got] == [keys for _, keys in want]
    assert [len(lines) for lines, _ in got] == [len(records) for records in chunks]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_RECORD | st.just(b"\xff|x"), min_size=1, max_size=6), min_size=1,
                max_size=3),
       st.sampled_from([[], ["a", "b"], ["a", "b", "c", "d"], ["k%", "a"], ["a", "a"]]),
       st.booleans(), st.sampled_from(["acc_129.log", "acc_1%d.log.1", "acc_129.log.\udcff"]),
       st.data())
def test_blocks_slice_into_what_json_dumps_gives(chunks, keys, decode, file_name, data):
    """cat --json turns a block of records into one bytes of lines, which the merge cuts
    into runs: any cut gives json.dumps's lines of those records."""
    assume(all(reader.split_block(b"\n".join(records)) == records for records in chunks))
    fast, slow = _printer(keys, decode), _printer(keys, decode)
    blocks = fast.chunks(map(b"\n".join, chunks), file_name, None)
    for records, (lines, _) in zip(chunks, blocks):
        assert len(lines) == len(records)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=3)))
        bounds = [0] + cuts + [len(records)]
        got = b"".join(bytes(lines[start:stop]) for start, stop in zip(bounds, bounds[1:]))
        assert got == b"".join(slow.json_line(raw, file_name) + b"\n" for raw in records)
