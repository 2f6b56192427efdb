"""Fault injection against a real `kamflat serve`, counted by id: one table.

    python benchmarks/bench_faults.py [--records N] [--senders S] [--kills K]

Scenarios: writers killed with -9 K times under load (flush 0 and 1); the acc directory
removed with rm -rf while records stream, then made again; a 2 MiB tmpfs that fills
while records stream, rotated (files renamed, flat_rotate, moved off the tmpfs) three
times; a 2 MiB tmpfs full at SIGTERM (flush 0 and 1). Every record carries an id
(kamflat.tools.tally); each row says how many were sent, acknowledged as written, are
on disk, and how many acknowledged are lost, duplicated or torn: all three must be 0.
The tmpfs rows need root (they are left out without it). Runs on a plain
`pip install .`: it imports only kamflat.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from kamflat.proto import mi
from kamflat.pytest_plugin import KamflatServer
from kamflat.tools import tally
from kamflat.tools.fifoclient import exchange

COLUMNS = ("sent", "acknowledged", "on disk", "lost-acknowledged", "duplicated", "torn")


class Streams:
    """Sender threads, each sending streams of `size` records until stopped; every
    stream's (started after `mark`, ids, acknowledged) is kept."""

    def __init__(self, server, senders, size):
        self.server, self.size = server, size
        self.done = threading.Event()
        self.mark = threading.Event()
        self.results = []
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(senders)]
        for thread in self.threads:
            thread.start()

    def run(self, k):
        n = 0
        while not self.done.is_set():
            after = self.mark.is_set()
            ids, acked = tally.send_records(self.server.ingest_socket, "s%d" % k, n, self.size)
            self.results.append((after, ids, acked))
            n += self.size

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join(180)

    def sent(self):
        return {i for _, ids, _ in self.results for i in ids}

    def acked(self, only_after=False):
        return set().union(*(a for after, _, a in self.results if after or not only_after))


def mi_request(server, command, *args):
    name = "bench_faults_%d" % os.getpid()
    return exchange(server.mi_fifo, mi.encode_request(command, name, list(args)),
                    "/tmp/" + name, 10.0).decode(errors="replace")


def writer_pid(server, rank):
    marker = "ID=%d PID=" % rank
    ps = mi_request(server, "ps")
    return int(ps.split(marker)[1].split()[0]) if marker in ps else None


def disk_bytes(directory):
    try:
        return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
    except OSError:
        return 0


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(0.02)


def new_server(base, name, **options):
    directory = os.path.join(base, name)
    os.mkdir(directory)
    return KamflatServer(directory, children=2, **options)


def kills(base, flush, opts):
    server = new_server(base, "kill%d" % flush, flush=flush)
    server.start()
    try:
        streams = Streams(server, opts.senders, opts.records)
        try:
            for kill in range(opts.kills):
                rank = kill % 2 + 1
                grown = disk_bytes(server.acc_dir) + 100_000
                wait(lambda: disk_bytes(server.acc_dir) > grown, 60, "records on disk")
                pid = writer_pid(server, rank)
                os.kill(pid, signal.SIGKILL)
                wait(lambda: writer_pid(server, rank) not in (None, pid), 20, "a restart")
        finally:
            streams.stop()
        stats = mi_request(server, "get_statistics", "flatstore:")
    finally:
        server.stop(60)
    counted = tally.count(streams.sent(), streams.acked(), tally.file_lines(server.acc_dir))
    written = int(stats.split("flatstore:acc_written = ")[1].split()[0])
    counted["note"] = "acc_written %s on disk" % ("=" if written == counted["on disk"] else
                                                  "%d !=" % written)
    return counted


def removal(base, flush, opts):
    server = new_server(base, "rm%d" % flush, flush=flush)
    server.start()
    try:
        streams = Streams(server, opts.senders, 500)
        try:
            wait(lambda: disk_bytes(server.acc_dir) > 500_000, 60, "records on disk")
            # rm -rf, and again if a writer that found its file deleted made it anew
            # before the rmdir ("Directory not empty"); counted from the last attempt on
            for _ in range(20):
                if not os.path.exists(server.acc_dir):
                    break
                shutil.rmtree(server.acc_dir, ignore_errors=True)
            else:
                raise RuntimeError("%s keeps coming back" % server.acc_dir)
            streams.mark.set()
            time.sleep(0.5)
            os.mkdir(server.acc_dir)
            time.sleep(2.0)
        finally:
            streams.stop()
            os.makedirs(server.acc_dir, exist_ok=True)
    finally:
        server.stop(60)
    # what was acknowledged before the removal went with the files: count what came after
    return tally.count(streams.sent(), streams.acked(only_after=True),
                       tally.file_lines(server.acc_dir))


class Tmpfs:
    def __init__(self, path, size="2m"):
        self.path = path
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path],
                       check=True)

    def close(self):
        subprocess.run(["umount", self.path], check=True)


def full_with_rotation(base, flush, opts):
    server = new_server(base, "fullrot%d" % flush, flush=flush)
    disk = Tmpfs(server.acc_dir)
    moved = os.path.join(server.directory, "rotated")
    os.mkdir(moved)
    try:
        server.start()
        try:
            streams = Streams(server, opts.senders, opts.records)
            try:
                for rotation in range(3):
                    seen = server.log().count("No space left on device")
                    wait(lambda: server.log().count("No space left on device") > seen, 60,
                         "the disk to fill")
                    try:
                        renamed = server.rotate()
                    except AssertionError:   # a writer could not write its buffer: 500
                        renamed = [n for n in os.listdir(server.acc_dir) if not
                                   n.endswith(".log")]
                    for name in renamed:     # off the tmpfs: the space comes back
                        shutil.move(os.path.join(server.acc_dir, name),
                                    os.path.join(moved, name))
            finally:
                streams.stop()
        finally:
            server.stop(60)
        lines = tally.file_lines(moved) + tally.file_lines(server.acc_dir)
    finally:
        disk.close()
    return tally.count(streams.sent(), streams.acked(), lines)


def full_at_stop(base, flush, opts):
    server = new_server(base, "fullstop%d" % flush, flush=flush,
                        extra_cfg='modparam("kamflat", "stop_grace", 2000)')
    disk = Tmpfs(server.acc_dir)
    try:
        server.start()
        try:
            streams = Streams(server, opts.senders, opts.records * 4)
            wait(lambda: "No space left on device" in server.log(), 60, "the disk to fill")
        finally:
            status = server.stop(60)
            streams.stop()
        lines = tally.file_lines(server.acc_dir)
    finally:
        disk.close()
    counted = tally.count(streams.sent(), streams.acked(), lines)
    on_disk = {line.split(b"|")[tally.ID_FIELD].decode() for line in lines}
    exact = all(acked == on_disk & set(ids) for _, ids, acked in streams.results)
    counted["note"] = "exit %s, reports %s the files" % (status, "match" if exact else
                                                         "DO NOT MATCH")
    return counted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000,
                        help="records per stream (default 20000)")
    parser.add_argument("--senders", type=int, default=3, help="sender threads (default 3)")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 per run (default 20)")
    opts = parser.parse_args(argv)
    scenarios = [("kill -9 x%d, flush=0" % opts.kills, kills, 0),
                 ("kill -9 x%d, flush=1" % opts.kills, kills, 1),
                 ("rm -rf + mkdir, flush=0", removal, 0),
                 ("rm -rf + mkdir, flush=1", removal, 1)]
    if os.geteuid() == 0:
        scenarios += [("disk full + 3 rotations, flush=0", full_with_rotation, 0),
                      ("disk full + 3 rotations, flush=1", full_with_rotation, 1),
                      ("disk full at stop, flush=0", full_at_stop, 0),
                      ("disk full at stop, flush=1", full_at_stop, 1)]
    else:
        print("not root: the tmpfs scenarios are left out", file=sys.stderr)
    base = tempfile.mkdtemp(prefix="kf-faults-")
    rows, failed = [], False
    try:
        for name, scenario, flush in scenarios:
            started = time.monotonic()
            counted = scenario(base, flush, opts)
            counted["note"] = ("%.1f s" % (time.monotonic() - started) + ", " +
                               counted.get("note", "")).rstrip(", ")
            failed |= any(counted[k] for k in ("lost-acknowledged", "duplicated", "torn",
                                                "foreign"))
            rows.append((name, counted))
            print("done: %s" % name, file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    widths = [max(len(c), 7) for c in COLUMNS]
    print("| %-*s | %s | note |" % (width, "scenario", " | ".join(
        "%*s" % (w, c) for w, c in zip(widths, COLUMNS))))
    print("|%s|%s|---|" % ("-" * (width + 2), "|".join("-" * (w + 2) for w in widths)))
    for name, counted in rows:
        print("| %-*s | %s | %s |" % (width, name, " | ".join(
            "%*d" % (w, counted[c]) for w, c in zip(widths, COLUMNS)), counted["note"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
