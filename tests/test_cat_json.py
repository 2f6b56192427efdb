"""`kamflat cat --json` writes runs of records from templates when it can: the bytes must
be what json.dumps gives for each record (Printer.write, the general way)."""
import io
from types import SimpleNamespace

from hypothesis import given, settings, strategies as st

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
       st.booleans(), st.sampled_from(["acc_129.log", "acc_1%d.log.1"]))
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
