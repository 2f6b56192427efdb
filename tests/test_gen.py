"""kamflat gen: deterministic, paired, rate-limited record generation, and the CLI end to end."""
import json
import os
import pty
import subprocess
import time
from collections import Counter

import pytest

from kamflat.tools.gen import EDGE_CASES, FAILURES, CallGenerator, TokenBucket
from conftest import kamflat_argv, kamflat_env, run_kamflat

FAILURE_CODES = {code for code, _reason, _weight in FAILURES}


def test_same_seed_same_records_other_seed_other_records():
    first = list(CallGenerator(seed=3, extra=True, edge_cases=EDGE_CASES).records(500))
    again = list(CallGenerator(seed=3, extra=True, edge_cases=EDGE_CASES).records(500))
    other = list(CallGenerator(seed=4, extra=True, edge_cases=EDGE_CASES).records(500))
    assert first == again
    assert first != other


def check_calls(records):
    """Every answered call is an INVITE + BYE pair with the same ids; failures are lone INVITEs."""
    calls = {}
    for record in records:
        method, from_tag, to_tag, callid, code, reason, when = record["values"][:7]
        assert isinstance(when, int) and code and reason
        if record["table"] == "missed_calls":
            assert method == "INVITE" and code in FAILURE_CODES
            assert (callid, from_tag, to_tag) not in calls
            continue
        assert record["table"] == "acc" and (code, reason) == ("200", "OK")
        calls.setdefault((callid, from_tag, to_tag), []).append((method, when))
    for key, events in calls.items():
        assert [m for m, _ in events] == ["INVITE", "BYE"], key
        assert events[0][1] <= events[1][1]
        assert key[2], "an answered call has a To tag"
    return calls


@pytest.mark.parametrize("count", [1, 2, 3, 7, 100, 2000])
def test_exactly_count_records_and_every_answered_call_has_its_bye(count):
    generator = CallGenerator(seed=count)
    records = list(generator.records(count))
    assert len(records) == count
    check_calls(records)
    times = [r["values"][6] for r in records]
    assert times == sorted(times)
    assert sum(generator.counts.values()) == count
    assert generator.hang_up_all() == []


def test_unbounded_stream_then_hang_up_all_closes_every_call():
    generator = CallGenerator(seed=9)
    head = [r for r, _ in zip(generator.records(), range(300))]
    tail = generator.hang_up_all()
    assert tail, "calls were still up"
    calls = check_calls(head + tail)
    assert len(calls) > 50
    missed = sum(1 for r in head + tail if r["table"] == "missed_calls")
    assert 0 < missed < len(head) / 2       # mostly answered, some failed


def test_extra_columns_and_every_edge_case_show_up():
    records = list(CallGenerator(seed=5, extra=True, edge_cases=EDGE_CASES).records(3000))
    assert {len(r["values"]) for r in records} == {10}
    callids = [r["values"][3] for r in records]
    users = [r["values"][7] for r in records]
    assert any("|" in c for c in callids)
    assert any(c.startswith("ü-") for c in callids) and any(u in ("jürgen", "用户", "Zoë") for u in users)
    assert "a%7Cb" in users and any(c.startswith("100%-") for c in callids)
    assert any(r["values"][1] == "" for r in records)
    assert max(map(len, callids)) > 8000
    check_calls(records)


def test_no_edge_cases_unless_asked():
    records = list(CallGenerator(seed=5, extra=True).records(3000))
    text = json.dumps(records, ensure_ascii=False)
    assert "|" not in text and "%" not in text and text.isascii()


def test_unknown_edge_case_is_refused():
    with pytest.raises(ValueError, match="unknown edge case nope"):
        CallGenerator(edge_cases=["pipe", "nope"])


def test_token_bucket_never_lets_more_than_rate_times_time_plus_burst():
    bucket = TokenBucket(rate=50, burst=5, now=0.0)
    now, sent, waits = 0.0, 0, 0
    while now < 10.0:
        allowed, wait = bucket.take(now, 8)
        sent += allowed
        if allowed:
            now += 0.001
        else:
            waits += 1
            assert 0 < wait <= 1 / 50
            now += wait
    assert 50 * 10 - 8 <= sent <= 50 * 10 + 5
    assert waits > 0


def test_token_bucket_first_burst_then_waits():
    bucket = TokenBucket(rate=10, burst=2, now=100.0)
    assert bucket.take(100.0, 5) == (2, 0.0)
    allowed, wait = bucket.take(100.0, 5)
    assert allowed == 0 and wait == pytest.approx(0.1)
    assert bucket.take(100.1, 5)[0] == 1


def test_cli_output_stdout_is_deterministic_json_lines_with_a_summary():
    args = ["gen", "--output", "-", "--count", "60", "--seed", "11", "--extra", "--edge-cases"]
    first, again = run_kamflat(*args), run_kamflat(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(records) == 60
    check_calls(records)
    tables = Counter(r["table"] for r in records)
    assert "kamflat gen: 60 records (acc %d, missed_calls %d)" % (tables["acc"], tables["missed_calls"]) \
        in first.stderr
    assert "\r" not in first.stderr   # no progress line when stderr is not a terminal


def test_cli_rate_limit_holds_the_pace_and_seconds_ends_every_call(tmp_path):
    out = tmp_path / "records.jsonl"
    started = time.monotonic()
    result = run_kamflat("gen", "--output", out, "--count", "40", "--rate", "100", "--seed", "1")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 40
    assert elapsed >= (40 - 5) / 100          # 5 = the bucket's burst at 100/s
    timed = run_kamflat("gen", "--output", "-", "--seconds", "0.3", "--rate", "200", "--seed", "2")
    assert timed.returncode == 0, timed.stderr
    check_calls([json.loads(line) for line in timed.stdout.splitlines()])


@pytest.mark.parametrize("args,status,message", [
    (["--output", "-", "--count", "0"], 2, "--count must be > 0"),
    (["--output", "-", "--count", "5", "--edge-cases", "pipe,bogus"], 2, "unknown edge case bogus"),
    (["--socket", "/nonexistent/ingest.sock", "--count", "5"], 3, "/nonexistent/ingest.sock"),
])
def test_cli_errors_are_one_clear_line(args, status, message):
    result = run_kamflat("gen", *args)
    assert result.returncode == status
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr and " records (" not in result.stderr   # no summary


def test_progress_line_on_a_terminal_only(tmp_path):
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(kamflat_argv("gen", "--output", tmp_path / "out.jsonl", "--seconds",
                                             "1.2", "--rate", "2000"),
                                env=kamflat_env(), stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:       # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
    text = err.decode()
    assert text.count("\rkamflat gen: sent ") >= 2           # updated while it runs
    assert "records/s  errors 0" in text
    assert text.rstrip().splitlines()[-1].startswith("kamflat gen: ")   # then the summary


def test_with_a_config_the_records_go_to_its_acc_tables(tmp_path):
    from kamflat.tools.gen import table_names
    cfg = tmp_path / "k.cfg"
    cfg.write_text('loadmodule "db_flatstore.so"\nloadmodule "acc.so"\n'
                   'modparam("acc", "db_url", "flatstore:%s")\n'
                   'modparam("acc", "db_table_acc", "cdr")\n' % tmp_path)
    names = table_names(str(cfg))
    assert names == {"acc_table": "cdr", "missed_table": "missed_calls"}
    records = list(CallGenerator(seed=1, **names).records(50))
    assert {r["table"] for r in records} == {"cdr", "missed_calls"}
