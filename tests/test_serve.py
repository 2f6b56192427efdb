"""`kamflat serve` end to end: real processes, sockets, FIFOs, files and signals."""
import json
import os
import signal
import subprocess
import threading
from collections import Counter

import pytest

from conftest import kamflat_argv, kamflat_env, run_kamflat, wait_until
from serverutil import Server, open_files_of, running, statistic
from kamflat.client import send, send_bytes


def acc_line(i, tag="t"):
    return json.dumps({"table": "acc", "values": [
        "INVITE", "ft%d" % i, "", "%s-%d@127.0.0.1" % (tag, i), 200, "OK", 1795763336,
        "alice", "example.com", "bob"]})


def expected_line(i, tag="t"):
    return ("INVITE|ft%d||%s-%d@127.0.0.1|200|OK|1795763336|alice|example.com|bob\n"
            % (i, tag, i)).encode()


def check_exactly_once(lines, count, tag="t"):
    assert all(line.endswith(b"\n") for line in lines), "a torn line"
    seen = Counter(lines)
    duplicated = [line for line, n in seen.items() if n > 1]
    assert not duplicated, "duplicated: %r" % duplicated[:3]
    missing = [i for i in range(count) if expected_line(i, tag) not in seen]
    assert not missing, "%d missing, first %r" % (len(missing), missing[:5])
    assert len(lines) == count


def test_records_spread_over_writers_and_land_once(tmp_path):
    with Server(tmp_path, children=2) as server:
        result = send(str(server.ingest), [acc_line(i) for i in range(5000)])
        assert result.ok and result.written == 5000 and result.lines == 5000
    files = sorted(p.name for p in server.acc.iterdir())
    assert files == ["acc_129.log", "acc_130.log"]   # ranks 1 and 2, as Kamailio names them
    check_exactly_once(server.lines(), 5000)


def test_bad_lines_get_their_line_number_and_do_not_stop_the_rest(tmp_path):
    lines = [acc_line(0), "not json", acc_line(1), '{"table": "../x", "values": []}',
             '{"table": "acc", "values": [[1]]}', acc_line(2),
             '{"table": "acc", "values": ["%s"]}' % ("x" * 200_000), acc_line(3)]
    with Server(tmp_path) as server:
        proc = subprocess.run(kamflat_argv("send", "--socket", server.ingest), env=kamflat_env(),
                              input="\n".join(lines) + "\n", capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 1
        assert "line 2: not valid JSON" in proc.stderr
        assert "line 4: " in proc.stderr and "line 5: value 0" in proc.stderr
        assert "line 7: line longer than 131072 bytes" in proc.stderr
        assert "sent 8 lines: 4 written, 4 refused" in proc.stderr
        assert statistic(server.mi("get_statistics", "ingest:"), "ingest:errors") == 4
        assert statistic(server.mi("get_statistics", "flatstore:"), "flatstore:acc_written") == 4
    check_exactly_once(server.lines(), 4)


def test_config_error_starts_nothing(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('loadmodule "db_flatstore.so"\nmodparam("db_flatstore", "flush", "0")\n')
    proc = run_kamflat("serve", "-f", cfg)
    assert proc.returncode == 1
    assert "%s:2:" % cfg in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flush", [1, 0])
def test_load_with_rotations_then_sigterm_loses_nothing(tmp_path, flush):
    """100,000 records through `kamflat send` while 20 mv + flat_rotate cycles run
    (benchmarks/bench_faults.py runs rotations under load at a larger scale)."""
    total = 100_000
    data = tmp_path / "records.jsonl"
    data.write_text("".join(acc_line(i) + "\n" for i in range(total)))
    server = Server(tmp_path, children=2, flush=flush).start()
    try:
        sender = subprocess.Popen(kamflat_argv("send", "--socket", server.ingest, data),
                                  env=kamflat_env(), stderr=subprocess.PIPE, text=True)
        try:
            for cycle in range(20):
                for live in server.acc.glob("acc_*.log"):
                    live.rename("%s.%d" % (live, cycle))
                assert server.mi("flat_rotate") == b"200 OK\n\n"
                # The reply means every writer closed its files: no renamed file is open.
                held = [p for p in server.open_files() if ".log." in p]
                assert not held, held
            _, err = sender.communicate(timeout=120)
            assert sender.returncode == 0, err
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    finally:
        assert server.stop() == 0
    check_exactly_once(server.lines(), total)
    assert not server.ingest.exists() and not server.fifo.exists()


def test_sigterm_mid_stream_writes_everything_taken(tmp_path):
    """A sender still streaming when the server stops: each line the server took is on disk."""
    server = Server(tmp_path, children=2, flush=0).start()
    result = {}

    def stream():
        blocks = ((acc_line(i) + "\n").encode() for i in range(2_000_000))
        from kamflat.client import send_bytes
        result["r"] = send_bytes(str(server.ingest), blocks, timeout=30)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_until(lambda: any(p.stat().st_size > 100_000 for p in server.acc.glob("*.log")),
                   20, what="records on disk")
    finally:
        assert server.stop() == 0
        thread.join(40)
    taken = result["r"]
    assert taken.stopped and taken.lines == taken.written > 0
    check_exactly_once(server.lines(), taken.lines)


def test_killed_writer_comes_back_with_same_rank_and_file(tmp_path):
    with Server(tmp_path, children=2) as server:
        assert send(str(server.ingest), [acc_line(i) for i in range(1000)]).ok
        ps = server.mi("ps").decode()
        writer_pid = int(ps.split("ID=1 PID=")[1].split()[0])
        os.kill(writer_pid, signal.SIGKILL)
        wait_until(lambda: "ID=1 PID=%d " % writer_pid not in server.mi("ps").decode()
                   and "ID=1 PID=" in server.mi("ps").decode(), 10, what="writer restart")
        new_pid = int(server.mi("ps").decode().split("ID=1 PID=")[1].split()[0])
        assert new_pid != writer_pid
        assert send(str(server.ingest), [acc_line(i, "after") for i in range(1000)]).ok
        held = open_files_of(new_pid)
        assert str(server.acc / "acc_129.log") in held
        assert statistic(server.mi("get_statistics", "core:"), "core:writer_restarts") == 1
        assert "died (killed by signal 9); restarting it with rank 1" in server.log()
    lines = server.lines()
    assert sum(1 for line in lines if b"|after-" in line) == 1000


def test_directory_removed_and_restored_under_load(tmp_path):
    with Server(tmp_path, children=2) as server:
        assert send(str(server.ingest), [acc_line(i) for i in range(100)]).ok
        saved = tmp_path / "saved"
        server.acc.rename(saved)
        assert server.mi("flat_rotate") == b"200 OK\n\n"
        result = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", send(
            str(server.ingest), [acc_line(i) for i in range(100, 3000)], timeout=30)))
        sender.start()
        try:
            wait_until(lambda: "No such file or directory" in server.log(), 10,
                       what="the write failure to be logged")
            assert sender.is_alive()      # records wait, the sender is slowed, nothing dropped
            server.acc.mkdir()
            sender.join(30)
        finally:
            if not server.acc.exists():
                server.acc.mkdir()
            sender.join(30)
        assert result["r"].ok and result["r"].written == 2900
        stats = server.mi("get_statistics", "flatstore:")
        assert statistic(stats, "flatstore:acc_failed") > 0
        assert statistic(stats, "flatstore:acc_written") == 3000
    lines = [line for p in (saved, server.acc) for f in sorted(p.iterdir())
             for line in f.read_bytes().splitlines(keepends=True)]
    check_exactly_once(lines, 3000)


def test_a_management_fifo_that_cannot_be_made_stops_the_start(tmp_path):
    server = Server(tmp_path, extra='modparam("mi_fifo", "reply_dir", "%s/missing/")' % tmp_path)
    proc = subprocess.run(kamflat_argv("serve", "-f", server.config), env=kamflat_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "kamflat could not start: " in proc.stderr and "/missing/" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not server.ingest.exists()


def test_writer_killed_mid_stream_the_sender_learns_which_lines_may_be_lost(tmp_path):
    total = 300_000
    with Server(tmp_path, children=2, flush=1) as server:
        result = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", send(
            str(server.ingest), [acc_line(i) for i in range(total)], timeout=60)))
        sender.start()
        try:
            wait_until(lambda: any(p.stat().st_size > 200_000 for p in server.acc.glob("*.log")),
                       20, what="records on disk")
            ps = server.mi("ps").decode()
            os.kill(int(ps.split("ID=1 PID=")[1].split()[0]), signal.SIGKILL)
        finally:
            sender.join(90)
        taken = result["r"]
        assert not sender.is_alive() and taken.lines == total
    uncertain = {line for line, message in taken.errors if "the writer died" in message}
    assert taken.error_count == len(uncertain) and taken.written + len(uncertain) == total
    seen = Counter(server.lines())
    assert max(seen.values()) == 1                       # nothing twice, nothing torn
    assert all(line.endswith(b"\n") for line in seen)
    missing = [i for i in range(total) if expected_line(i) not in seen]
    assert set(i + 1 for i in missing) <= uncertain     # only reported lines may be gone


# Config errors (listen=tcp:..., a path too long for a socket) are refused before the
# start, by check and serve alike: test_model.py. These can only fail at bind time.
@pytest.mark.parametrize("extra, message", [
    ("listen=udp:192.0.2.1:5060",
     "kamflat: cannot start: listen=udp:192.0.2.1:5060: cannot bind 192.0.2.1 port 5060"),
])
def test_sockets_that_cannot_be_made_stop_the_start_with_a_clear_line(tmp_path, extra, message):
    server = Server(tmp_path, extra=extra)
    proc = subprocess.run(kamflat_argv("serve", "-f", server.config), env=kamflat_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_an_over_long_last_line_without_newline_is_refused_and_the_sender_answered(tmp_path):
    with Server(tmp_path) as server:
        result = send_bytes(str(server.ingest), [(acc_line(0) + "\n").encode(),
                                                 b'{"table": "acc", "values": ["' + b"x" * 300_000],
                            timeout=20)
        assert result.lines == 2 and result.written == 1
        assert result.errors == [(2, "line longer than 131072 bytes")]


def test_flush_0_writes_a_quiet_servers_records_within_a_second_or_so(tmp_path):
    with Server(tmp_path, children=2, flush=0) as server:
        assert send(str(server.ingest), [acc_line(i) for i in range(10)]).ok
        # Far below a 64 KiB block: still on disk soon, whole records only.
        wait_until(lambda: len(server.lines()) == 10, 5, what="buffered records on disk")
        assert all(line.endswith(b"\n") for line in server.lines())
    check_exactly_once(server.lines(), 10)


def test_children_stop_cleanly_when_the_master_is_killed(tmp_path):
    server = Server(tmp_path, children=2, flush=0).start()
    try:
        children = server.pids()[1:]
        assert send(str(server.ingest), [acc_line(i) for i in range(100)]).ok
        server.process.kill()
        server.process.wait(10)
        wait_until(lambda: not any(map(running, children)), 20, what="the children to stop")
    finally:
        server.stop()
    assert not server.fifo.exists()                 # the management process cleaned up
    check_exactly_once(server.lines(), 100)         # the writers wrote their buffers
