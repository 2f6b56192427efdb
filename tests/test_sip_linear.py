"""SIP parsing is linear in the datagram size: the worst shapes known (a line without
':', thousands of headers, long display names, deep URI params, hundreds of Vias, many
commas, ...) take about 8 times as long at 64 KiB as at 8 KiB, never about 64 times.

The shapes are benchmarks/bench_sip_parse.py's (which prints the absolute times). Each
time is the best of several runs, 8 KiB and 64 KiB interleaved, so a busy machine slows
both sides alike; a linear parser gets under the limit in the first rounds, a quadratic
one never does."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_sip_parse import BIG, SMALL, every_pv_handler, shapes  # noqa: E402

SMALL_SHAPES, BIG_SHAPES = shapes(SMALL), shapes(BIG)
LINEAR_LIMIT = 20          # linear is ~8 (less with fixed costs), quadratic ~64


def _timed(handler, data):
    t = time.perf_counter()
    handler.handle(data, ("127.0.0.1", 5060))
    return time.perf_counter() - t


def best_ratio(handler, small, big, min_rounds=3, max_rounds=15):
    """big/small, each the best time so far, after at least min_rounds and until the
    ratio is under the limit or max_rounds have run."""
    best_small = best_big = float("inf")
    for n in range(max_rounds):
        best_small = min(best_small, _timed(handler, small))
        best_big = min(best_big, _timed(handler, big))
        if n + 1 >= min_rounds and best_big / best_small < LINEAR_LIMIT:
            break
    return best_big / best_small, best_small, best_big


def test_shapes_have_their_sizes():
    for name in SMALL_SHAPES:
        assert SMALL - 100 < len(SMALL_SHAPES[name]) <= SMALL, name
        assert BIG - 100 < len(BIG_SHAPES[name]) <= BIG, name


@pytest.mark.parametrize("name", list(SMALL_SHAPES))
def test_parsing_time_grows_linearly(name):
    ratio, t_small, t_big = best_ratio(every_pv_handler(), SMALL_SHAPES[name],
                                       BIG_SHAPES[name])
    assert ratio < LINEAR_LIMIT, "%s: %.2f ms at %d bytes, %.2f ms at %d bytes" % (
        name, t_small * 1e3, SMALL, t_big * 1e3, BIG)
