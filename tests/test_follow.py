"""kamflat.flatstore.follow: follow a table's files across renames and new files, every record once.

The big test runs a real writer process (flatstore-style lines, appends, reopens its files by
name when told to) and rotates under it 10 times; the small ones drive Follower.poll() by hand.
"""
import os
import subprocess
import sys
import threading

import pytest

from kamflat.flatstore.follow import Follower
from conftest import wait_until



def pyinotify_imports():
    """Installed is not enough: on Python >= 3.12 it also needs pyasyncore."""
    try:
        import pyinotify  # noqa: F401
    except Exception:
        return False
    return True


HAVE_PYINOTIFY = pyinotify_imports()
MODES = ["poll", pytest.param("inotify", marks=pytest.mark.skipif(
    not HAVE_PYINOTIFY, reason="pyinotify cannot be imported"))]

# A flatstore-style writer: appends records to DIR/acc_<N>.log, a record sometimes in several
# write() calls (so readers see partial lines), sometimes longer than a read chunk. Commands on
# stdin: "r" reopen every file by name (what flat_rotate makes a writer do), "a N" start
# writing acc_N.log too, "q" stop. It answers each command on stdout once done.
WRITER = r"""
import os, random, select, sys, time
directory, numbers = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
rng = random.Random(7)
fds, seq = {}, 0
def reopen(n):
    if n in fds:
        os.close(fds[n])
    fds[n] = os.open(os.path.join(directory, "acc_%d.log" % n), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for n in numbers:
    reopen(n)
while True:
    if select.select([sys.stdin], [], [], 0)[0]:
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "q":
            print("count %d" % seq, flush=True)
            break
        if cmd[0] == "r":
            for n in list(fds):
                reopen(n)
        elif cmd[0] == "a":
            reopen(int(cmd[1]))
        print("ok", flush=True)
    n = rng.choice(list(fds))
    pad = "x" * (70000 if seq % 500 == 7 else rng.randrange(40))
    line = ("INVITE|ft-%d|tt|seq-%d|200|OK|%d|%s\n" % (n, seq, int(time.time()), pad)).encode()
    cut = rng.randrange(len(line)) if seq % 3 == 0 else len(line)
    os.write(fds[n], line[:cut])
    if cut < len(line):
        time.sleep(0.0005)
        os.write(fds[n], line[cut:])
    seq += 1
    time.sleep(0.0002)
"""


class Writer:
    def __init__(self, directory, numbers):
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory),
                                      ",".join(map(str, numbers))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def command(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self):
        """Stop writing; returns how many records were written."""
        reply = self.command("q")
        self.proc.wait(timeout=10)
        return int(reply.split()[1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Collector:
    """Runs follower.records() in a thread and keeps what it yields."""

    def __init__(self, follower):
        self.follower = follower
        self.got = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for record in self.follower.records(self.stop):
            self.got.append(record)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.follower.close()


def seq_of(record):
    return int(record.raw.split(b"|")[3].split(b"-")[1])


def grew_by(directory, before, nbytes):
    """The live files' sizes once together they grew by `nbytes` since `before`, else None."""
    now = {p.name: p.stat().st_size for p in directory.glob("acc_*.log")}
    grown = sum(size - before.get(name, 0) for name, size in now.items())
    return now if grown >= nbytes else None


@pytest.mark.parametrize("mode", MODES)
def test_ten_rotations_under_concurrent_writing_nothing_missed_or_repeated(tmp_path, mode):
    notices = []
    follower = Follower(str(tmp_path), "acc", mode=mode, retire_after=0.3,
                        on_notice=notices.append)
    assert follower.mode == mode
    collector = Collector(follower)
    writer = Writer(tmp_path, [129, 130])
    try:
        sizes = {}
        for cycle in range(10):
            sizes = wait_until(lambda: grew_by(tmp_path, sizes, 20000), what="writer progress")
            sizes = {name: 0 for name in sizes}  # the renamed files' successors start empty
            # rename as an operator or logrotate would (two suffix styles), then reopen
            os.rename(tmp_path / "acc_129.log", tmp_path / ("acc_129.log.%d" % cycle))
            os.rename(tmp_path / "acc_130.log", tmp_path / ("acc_130.log-2026010%d" % cycle))
            if cycle == 4:  # a process that starts accounting mid-way
                assert writer.command("a 131") == "ok"
            assert writer.command("r") == "ok"
        total = writer.stop()
    finally:
        writer.kill()
    try:
        wait_until(lambda: len(collector.got) >= total, timeout=15,
                   what="all %d records followed" % total)
    finally:
        collector.close()
    seqs = [seq_of(r) for r in collector.got]
    assert len(seqs) == total, "repeated records"
    assert sorted(seqs) == list(range(total))
    assert total > 1000, total
    assert "acc_131.log" in {r.file for r in collector.got}
    assert len({r.inode for r in collector.got}) > 10   # records came from many generations
    assert not notices


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def raws(records):
    return [r.raw for r in records]


def test_partial_line_waits_for_its_end(tmp_path):
    append(tmp_path / "acc_129.log", b"a|1\nb|")
    with Follower(str(tmp_path), "acc", mode="poll") as follower:
        assert raws(follower.poll()) == [b"a|1"]
        assert follower.poll() == []
        append(tmp_path / "acc_129.log", b"2\n")
        assert raws(follower.poll()) == [b"b|2"]


def test_record_ending_in_cr_waits_one_look_for_a_folded_continuation(tmp_path):
    path = tmp_path / "acc_129.log"
    append(path, b"a|ua foo\r\n")
    with Follower(str(tmp_path), "acc", mode="poll") as follower:
        assert follower.poll() == []                     # a folded header may go on
        append(path, b" bar|x\nb|ua\r\n")
        assert raws(follower.poll()) == [b"a|ua foo\r\n bar|x"]
        assert raws(follower.poll()) == [b"b|ua\r"]      # nothing came after it: complete


def test_from_end_skips_what_exists_but_finishes_a_record_being_written(tmp_path):
    append(tmp_path / "acc_129.log", b"old|1\nnew|")
    append(tmp_path / "acc_130.log", b"old|2\n")
    with Follower(str(tmp_path), "acc", mode="poll", from_end=True) as follower:
        assert follower.poll() == []
        append(tmp_path / "acc_129.log", b"1\n")
        append(tmp_path / "acc_130.log", b"new|2\n")
        assert sorted(raws(follower.poll())) == [b"new|1", b"new|2"]


def test_file_created_and_rotated_between_looks_is_read_but_old_history_is_not(tmp_path):
    append(tmp_path / "acc_129.log.1", b"history|1\n")
    with Follower(str(tmp_path), "acc", mode="poll") as follower:
        assert follower.poll() == []
        append(tmp_path / "acc_129.log", b"quick|1\n")
        os.rename(tmp_path / "acc_129.log", tmp_path / "acc_129.log.0")
        got = follower.poll()
        assert [(r.raw, r.file) for r in got] == [(b"quick|1", "acc_129.log.0")]
        os.rename(tmp_path / "acc_129.log.0", tmp_path / "acc_129.log.2")  # logrotate shifting
        assert follower.poll() == []


def test_rotated_option_reads_what_was_rotated_before_the_start(tmp_path):
    append(tmp_path / "acc_129.log.1", b"rotated|1\n")
    append(tmp_path / "acc_129.log.2.gz", b"\x1f\x8b never")
    append(tmp_path / "acc_129.log", b"live|1\n")
    with Follower(str(tmp_path), "acc", mode="poll", rotated=True) as follower:
        assert sorted(raws(follower.poll())) == [b"live|1", b"rotated|1"]


def test_renamed_file_moved_out_of_directory_is_read_to_its_end(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    live = tmp_path / "acc" / "acc_129.log"
    live.parent.mkdir()
    append(live, b"a|1\n")
    with Follower(str(live.parent), "acc", mode="poll", retire_after=60) as follower:
        assert raws(follower.poll()) == [b"a|1"]
        os.rename(live, archive / "acc_129.log")
        append(archive / "acc_129.log", b"a|2\n")     # the writer has not reopened yet
        append(live, b"b|1\n")                        # ... and now it has
        assert sorted(raws(follower.poll())) == [b"a|2", b"b|1"]


def test_deleted_file_is_read_to_its_end_then_closed(tmp_path):
    path = tmp_path / "acc_129.log"
    append(path, b"a|1\n")
    with Follower(str(tmp_path), "acc", mode="poll", retire_after=60) as follower:
        follower.poll()
        with open(path, "ab") as writer:
            os.unlink(path)
            writer.write(b"a|2\n")
        assert raws(follower.poll()) == [b"a|2"]
        assert follower._tracked == {}


def test_quiet_retired_file_is_closed_and_partial_tail_reported(tmp_path):
    notices = []
    append(tmp_path / "acc_129.log", b"a|1\ntorn")
    with Follower(str(tmp_path), "acc", mode="poll", retire_after=0,
                  on_notice=notices.append) as follower:
        follower.poll()
        os.rename(tmp_path / "acc_129.log", tmp_path / "acc_129.log.1")
        follower.poll()
        assert follower._tracked == {}
        assert follower.poll() == []        # not read again under its rotated name
    assert notices == ["acc_129.log.1 ended with a partial record (4 bytes) that was never completed"]


def test_compressed_rotations_are_never_followed(tmp_path):
    with Follower(str(tmp_path), "acc", mode="poll") as follower:
        append(tmp_path / "acc_129.log.1.gz", b"\x1f\x8b not read")
        assert follower.poll() == []


def test_truncated_file_is_read_again_from_its_start(tmp_path):
    notices = []
    path = tmp_path / "acc_129.log"
    append(path, b"a|1\na|2\n")
    with Follower(str(tmp_path), "acc", mode="poll", on_notice=notices.append) as follower:
        follower.poll()
        os.truncate(path, 0)
        append(path, b"b|1\n")
        assert raws(follower.poll()) == [b"b|1"]
    assert notices == ["acc_129.log was truncated; reading it again from its start"]


def test_records_stops_on_timeout_and_missing_directory_is_a_clear_error(tmp_path):
    with Follower(str(tmp_path), "acc", mode="poll") as follower:
        assert list(follower.records(timeout=0.2)) == []
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        Follower(str(tmp_path / "nowhere"), "acc")


def test_auto_mode_falls_back_to_polling_when_pyinotify_cannot_be_imported(tmp_path):
    # a child interpreter where `import pyinotify` fails, as on Python 3.12 without pyasyncore
    code = ("import sys; sys.modules['pyinotify'] = None\n"
            "from kamflat.flatstore.follow import Follower\n"
            "f = Follower(sys.argv[1], 'acc', on_notice=print)\n"
            "print(f.mode)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    notice, mode = out.stdout.splitlines()
    assert mode == "poll"
    assert notice.startswith("inotify unavailable (ModuleNotFoundError") and "polling every 100 ms" in notice
