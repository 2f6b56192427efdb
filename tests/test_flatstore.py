"""The flatstore writer against real files, real renames and real processes."""
import json
import re
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import kamflat_env, wait_until
import kamflat
from kamflat.flatstore.connection import (UNSUPPORTED_OPERATIONS, FlatstoreError, NotSupportedError,
                               RotationCounter)


def record(i, tag="r"):
    return ["INVITE", "%s-%d" % (tag, i), "", "call|%d" % i, "200", "OK", 1795763336 + i]


def line(i, tag="r"):
    return b"INVITE|%s-%d||call%%7C%d|200|OK|%d\n" % (tag.encode(), i, i, 1795763336 + i)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_paths():
    """Files this process holds open, from /proc."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass
    return paths


def open_acc(directory, **options):
    conn = kamflat.connect("flatstore:%s" % directory, **options)
    conn.use_table("acc")
    return conn


@pytest.mark.parametrize("rank, name", [
    (1, "acc_129.log"), (4, "acc_132.log"), (0, "acc_0.log"), (-1, "acc_1.log"), (-2, "acc_2.log"),
])
def test_file_name_follows_the_rank_as_real_servers_do(tmp_path, rank, name):
    with open_acc(tmp_path, rank=rank) as conn:
        conn.insert(None, record(1))
    assert os.listdir(tmp_path) == [name]
    assert read(tmp_path / name) == line(1)


@pytest.mark.parametrize("flush", [True, False])
def test_file_appears_on_the_first_insert_of_its_table(tmp_path, flush):
    (tmp_path / "acc_129.log").write_bytes(b"kept|from|before\n")  # append, never truncate
    conn = kamflat.connect("flatstore:%s" % tmp_path, flush=flush)
    conn.use_table("missed_calls")
    conn.use_table("acc")
    assert os.listdir(tmp_path) == ["acc_129.log"]
    conn.insert(["method", "from_tag", "to_tag", "callid", "code", "reason", "time"], record(1))
    conn.use_table("missed_calls")
    conn.insert(None, record(2))
    assert sorted(os.listdir(tmp_path)) == ["acc_129.log", "missed_calls_129.log"]
    conn.close()
    assert read(tmp_path / "acc_129.log") == b"kept|from|before\n" + line(1)
    assert read(tmp_path / "missed_calls_129.log") == line(2)


@pytest.mark.parametrize("flush", [True, False])
def test_mv_rotate_insert_puts_every_record_once_in_the_right_file(tmp_path, flush):
    counter = RotationCounter()
    conn = open_acc(tmp_path, flush=flush, rotation=counter)
    live = tmp_path / "acc_129.log"
    conn.insert(None, record(1))
    os.rename(live, tmp_path / "acc_129.log.1")
    conn.insert(None, record(2))          # same open file: still the renamed one
    assert counter.advance() == 1
    conn.insert(None, record(3))          # first record after the rotation: the new file
    # Two more rotations right away, well within one second: both must take effect.
    os.rename(live, tmp_path / "acc_129.log.2")
    counter.advance()
    conn.insert(None, record(4))
    os.rename(live, tmp_path / "acc_129.log.3")
    counter.advance()
    conn.insert(None, record(5))
    if not flush:   # the buffer went to the old file when the rotation was seen
        assert read(tmp_path / "acc_129.log.2") == line(3)
    conn.close()
    assert read(tmp_path / "acc_129.log.1") == line(1) + line(2)
    assert read(tmp_path / "acc_129.log.2") == line(3)
    assert read(tmp_path / "acc_129.log.3") == line(4)
    assert read(live) == line(5)
    counter.close()


def test_idle_connection_keeps_its_file_until_its_next_insert(tmp_path):
    counter = RotationCounter()
    conn = open_acc(tmp_path, rotation=counter)
    conn.insert(None, record(1))
    os.rename(tmp_path / "acc_129.log", tmp_path / "old")
    counter.advance()
    assert str(tmp_path / "old") in open_paths()     # lazy, as Kamailio
    conn.insert(None, record(2))
    assert str(tmp_path / "old") not in open_paths()
    conn.close()
    assert read(tmp_path / "old") == line(1)
    assert read(tmp_path / "acc_129.log") == line(2)


WRITER = r"""
import os, sys, kamflat
from kamflat.flatstore.connection import RotationCounter
directory, counter_path, rank, flush, stop = sys.argv[1:]
conn = kamflat.connect("flatstore:" + directory, rank=int(rank), flush=int(flush),
                       rotation=RotationCounter(counter_path))
conn.use_table("acc")
i = 0
while i < 1000 or not os.path.exists(stop):
    for _ in range(50):
        conn.insert(None, ["INVITE", "rank" + rank, "", "call-%d" % i, "200", "OK", i])
        i += 1
conn.close()
print(i)
"""


@pytest.mark.parametrize("flush", [1, 0])
def test_two_processes_rotated_while_writing_keep_every_record_once(tmp_path, flush):
    """Two unrelated writer processes share a file-backed counter; the test renames their
    files and advances the counter 5 times while they write."""
    directory = tmp_path / "acc"
    directory.mkdir()
    counter_path = str(tmp_path / "rotation")
    counter = RotationCounter(counter_path)
    stop = tmp_path / "stop"
    ranks = (1, 2)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(directory), counter_path,
                                 str(rank), str(flush), str(stop)],
                                stdout=subprocess.PIPE, env=kamflat_env()) for rank in ranks]
    lives = [directory / ("acc_%d.log" % (128 + rank)) for rank in ranks]
    try:
        for generation in range(1, 6):
            for live in lives:
                wait_until(live.exists, what="%s after rotation %d" % (live, generation - 1))
                os.rename(live, "%s.%d" % (live, generation))
            assert counter.advance() == generation
        for live in lives:   # the last rotation took effect too before the writers stop
            wait_until(live.exists, what="%s after rotation 5" % live)
        stop.touch()
        counts = [int(writer.communicate(timeout=20)[0]) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    for rank, count, live in zip(ranks, counts, lives):
        files = ["%s.%d" % (live, generation) for generation in range(1, 6)] + [live]
        pieces = [read(path) for path in files]
        expected = b"".join(b"INVITE|rank%d||call-%d|200|OK|%d\n" % (rank, i, i)
                            for i in range(count))
        assert b"".join(pieces) == expected      # every record once, in order
        assert all(pieces[:5]), "a rotated file got no records"
    counter.close()


def test_rotation_counter_advances_are_not_lost_across_processes(tmp_path):
    anonymous = RotationCounter()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(2000):
                    anonymous.advance()
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    assert anonymous.value == 4000

    path = str(tmp_path / "counter")
    script = ("import sys; from kamflat.flatstore.connection import RotationCounter\n"
              "c = RotationCounter(sys.argv[1])\n"
              "for _ in range(1000): c.advance()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, path], env=kamflat_env())
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=20) == 0
    assert RotationCounter(path).value == 2000
    assert os.path.getsize(path) == 8


def test_rotation_counter_refuses_a_file_that_is_not_one(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("this is not a counter\n")
    with pytest.raises(ValueError, match="notes.txt is not a rotation counter"):
        RotationCounter(str(other))
    assert other.read_text() == "this is not a counter\n"


def boundaries(lines):
    sizes, total = {0}, 0
    for data in lines:
        total += len(data)
        sizes.add(total)
    return sizes


def test_flush0_never_leaves_half_a_record_and_loses_nothing_on_close(tmp_path):
    conn = open_acc(tmp_path, flush=False)
    path = tmp_path / "acc_129.log"
    written = []
    for i in range(400):
        values = ["rec-%d" % i, "x" * ((i * 7919) % 9000), i]
        conn.insert(None, values)
        written.append(b"rec-%d|%s|%d\n" % (i, b"x" * ((i * 7919) % 9000), i))
        assert os.path.getsize(path) in boundaries(written)
    assert os.path.getsize(path) > 0            # 1.8 MB went through a 64 KiB buffer
    assert os.path.getsize(path) < sum(map(len, written))
    conn.close()
    assert read(path) == b"".join(written)


@pytest.mark.parametrize("flush", [True, False])
def test_close_files_then_insert_reopens_by_name(tmp_path, flush):
    conn = open_acc(tmp_path, flush=flush)
    path = tmp_path / "acc_129.log"
    conn.insert(None, record(1))
    conn.close_files()
    assert read(path) == line(1)
    assert str(path) not in open_paths()
    os.rename(path, tmp_path / "shipped")
    conn.insert(None, record(2))
    conn.close()
    assert read(tmp_path / "shipped") == line(1)
    assert read(path) == line(2)


@pytest.mark.parametrize("flush", [True, False])
def test_missing_directory_error_names_the_path_and_recovers_after_mkdir(tmp_path, flush):
    directory = tmp_path / "acc"
    counter = RotationCounter()
    conn = open_acc(directory, flush=flush, rotation=counter)
    with pytest.raises(FlatstoreError) as caught:
        conn.insert(None, record(1))
    assert str(directory / "acc_129.log") in str(caught.value)
    assert "No such file or directory" in str(caught.value)
    directory.mkdir()
    conn.insert(None, record(1))             # the same insert, retried: no restart
    # Removed at run time, then rotated (Kamailio breaks that writer until a restart).
    shutil.rmtree(directory)
    counter.advance()
    for _attempt in range(3):
        with pytest.raises(FlatstoreError, match=str(directory)):
            conn.insert(None, record(2))
    directory.mkdir()
    conn.insert(None, record(2))
    conn.close()
    assert read(directory / "acc_129.log") == line(2)     # once, whole
    counter.close()


def test_a_file_in_place_of_the_directory_is_an_error_until_it_is_a_directory(tmp_path):
    target = tmp_path / "acc"
    target.write_text("not a directory")
    conn = open_acc(target)
    with pytest.raises(FlatstoreError, match="acc_129.log: Not a directory"):
        conn.insert(None, record(1))
    target.unlink()
    target.mkdir()
    conn.insert(None, record(1))
    conn.close()
    assert read(target / "acc_129.log") == line(1)


NOBODY = 65534      # as root, permissions are not enforced: the test drops to this uid


def test_unwritable_directory(tmp_path):
    """An unwritable directory is an error naming the reason, until it is writable again.
    Root is exempt from permissions, so the writer runs in a child as an unprivileged uid."""
    base = tempfile.mkdtemp(prefix="kamflat-perm-")      # reachable by that uid, unlike tmp_path
    try:
        os.chmod(base, 0o755)
        directory = os.path.join(base, "acc")
        os.mkdir(directory, 0o500)
        unprivileged = os.geteuid() == 0
        if unprivileged:
            os.chown(directory, NOBODY, NOBODY)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            status = 1
            try:
                if unprivileged:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                conn = open_acc(directory)
                try:
                    conn.insert(None, record(1))
                    refused = "written"
                except FlatstoreError as exc:
                    refused = str(exc)
                os.chmod(directory, 0o700)
                conn.insert(None, record(1))
                conn.close()
                os.write(write_end, refused.encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            refused = report.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
        assert "Permission denied" in refused and "acc_129.log" in refused
        assert read(os.path.join(directory, "acc_129.log")) == line(1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


FULL_DISK_CHILD_LIMIT = 3000


def run_with_file_size_limit(tmp_path, flush, count):
    """In a child with RLIMIT_FSIZE (a disk that fills up), insert records, retrying each
    failed insert once the limit is lifted. Returns the child's report."""
    report = tmp_path / "report.json"
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG, not a signal
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_CHILD_LIMIT, hard))
            conn = open_acc(tmp_path, flush=flush)
            failed_at_sizes = []
            for i in range(count):
                while True:
                    try:
                        conn.insert(None, record(i, "x" * (i % 300)))
                        break
                    except FlatstoreError:
                        failed_at_sizes.append(os.path.getsize(tmp_path / "acc_129.log"))
                        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            conn.close()
            report.write_text(json.dumps(failed_at_sizes))
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    return json.loads(report.read_text())


@pytest.mark.parametrize("flush, count", [(True, 100), (False, 800)])
def test_disk_full_tears_no_record_and_the_retry_keeps_it_once(tmp_path, flush, count):
    failed_at_sizes = run_with_file_size_limit(tmp_path, flush, count)
    expected = [line(i, "x" * (i % 300)) for i in range(count)]
    assert len(failed_at_sizes) == 1
    assert failed_at_sizes[0] in boundaries(expected)
    assert 0 < failed_at_sizes[0] <= FULL_DISK_CHILD_LIMIT
    assert read(tmp_path / "acc_129.log") == b"".join(expected)


@pytest.mark.parametrize("table, why", [
    ("", "empty"), ("../acc", "contains '/'"), ("a/b", "contains '/'"), ("..", "contains '..'"),
    ("x..y", "contains '..'"), ("acc\0", "contains NUL"), (b"acc", "must be a str"),
])
def test_table_names_that_could_leave_the_directory_are_refused(tmp_path, table, why):
    conn = kamflat.connect("flatstore:%s" % tmp_path)
    with pytest.raises(ValueError, match=why):
        conn.use_table(table)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url", ["mysql://kamailio@localhost/kamailio", "flatstore:",
                                 "/var/log/acc", "text:/tmp", None])
def test_url_that_is_not_flatstore_is_refused_naming_it(url):
    with pytest.raises(ValueError, match="not a flatstore URL: " + re.escape(repr(url))):
        kamflat.connect(url)


def test_relative_url_and_bad_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conn = kamflat.connect("flatstore:logs", rank=3)
    assert conn.path("acc") == str(tmp_path / "logs" / "acc_131.log")
    with pytest.raises(ValueError, match="rank must be an int"):
        kamflat.connect("flatstore:/x", rank="1")
    with pytest.raises(TypeError, match="rotation must be a RotationCounter"):
        kamflat.connect("flatstore:/x", rotation=5)


def test_insert_needs_a_table_matching_keys_and_an_open_connection(tmp_path):
    conn = kamflat.connect("flatstore:%s" % tmp_path)
    with pytest.raises(FlatstoreError, match="call use_table"):
        conn.insert(None, ["a"])
    conn.use_table("acc")
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        conn.insert(["a", "b"], ["x"])
    conn.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(FlatstoreError, match="is closed"):
        conn.insert(None, ["a"])
    with pytest.raises(FlatstoreError, match="is closed"):
        conn.use_table("acc")
    conn.close()   # twice is fine


@pytest.mark.parametrize("operation", UNSUPPORTED_OPERATIONS)
def test_other_db_operations_are_not_supported(tmp_path, operation):
    conn = kamflat.connect("flatstore:%s" % tmp_path)
    conn.use_table("acc")
    with pytest.raises(NotSupportedError, match="%s\\(\\) is not supported by flatstore"
                       % operation):
        getattr(conn, operation)("acc", ["id"], [1])


def test_write_buffered_writes_whole_records_and_keeps_the_file_open(tmp_path):
    conn = kamflat.connect("flatstore:%s" % tmp_path, rank=1, flush=False)
    conn.use_table("acc")
    assert not conn.buffered
    conn.insert(None, ["INVITE", "a|b", 1])
    conn.insert(None, ["BYE", "", None])
    path = tmp_path / "acc_129.log"
    assert conn.buffered and path.read_bytes() == b""
    conn.write_buffered()
    assert not conn.buffered
    assert path.read_bytes() == b"INVITE|a%7Cb|1\nBYE||\n"
    conn.insert(None, ["ACK", "x", 2])             # same file, still open
    conn.close()
    assert path.read_bytes().endswith(b"ACK|x|2\n")
