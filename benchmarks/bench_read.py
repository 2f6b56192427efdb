"""Reading speed: `kamflat cat` and `kamflat cat --json` over generated acc files against
`sort -m -s -t'|' -k7,7n` on the same files, and `kamflat follow` keeping up with a writer.

Files: the records of `kamflat gen` (seeded, db_extra columns, edge cases), spread over
FILES per-process files as a server's writers would (acc_129.log ...), in time order in
each file; --rotated adds a rotated and a gzip-compressed generation of each file.
sort -m merges the same set of lines kamflat prints: with --rotated every generation, the
gzip'ed ones decompressed into a scratch directory before it runs (not timed), and the CPU
seconds zlib alone takes for those files are printed after (kamflat cat decompresses them).
Printed per reader: seconds, records/s, and the ratio to sort -m over the same files
(target: cat >= 0.3x sort -m, cat --json >= 0.5x cat); all in the same invocation. The
same ratios of CPU seconds (user + system of the reader) follow: on a loaded machine they
move less than the wall clock. --repeat N runs the three N times, in turn, and keeps the
fastest of each.
Then `kamflat follow` reads while a writer appends as fast as it can (a kamflat
flatstore connection with flush=1, the way `kamflat serve` writes): records/s written,
records/s followed, and the lag (records written but not yet printed) at the end of
the write and how long follow took to catch up.

    python3 benchmarks/bench_read.py [--records 1000000] [--files 4] [--cps 200]
                                     [--rotated] [--follow-seconds 3] [--repeat 1]
"""
import argparse
import gzip
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import kamflat  # noqa: E402
from kamflat.flatstore.record import make_encoder  # noqa: E402
from kamflat.tools.gen import CallGenerator  # noqa: E402

EXTRA = ["src_user", "src_domain", "dst_ouser"]
CONFIG = """loadmodule "acc.so"
modparam("acc", "db_url", "flatstore:{directory}")
modparam("acc", "db_extra", "src_user=$fU;src_domain=$fd;dst_ouser=$tU")
"""


def make_files(directory, records, files=4, cps=200.0, seed=1, suffix="", edge=True):
    """Write `records` acc records over `files` files acc_129.log... (+ `suffix`); returns
    the number written. Records go to the files round-robin, as calls spread over the
    writers of a server, each file in time order."""
    generator = CallGenerator(seed=seed, cps=cps, extra=True,
                              edge_cases=["pipe", "utf8", "percent", "empty"] if edge else [])
    encode = make_encoder()
    outs = [open(os.path.join(directory, "acc_%d.log%s" % (129 + i, suffix)), "ab")
            for i in range(files)]
    written = 0
    try:
        for n, record in enumerate(generator.records()):
            if written >= records:
                break
            if record["table"] != "acc":
                continue
            outs[n % files].write(encode(record["values"]))
            written += 1
    finally:
        for out in outs:
            out.close()
    return written


def timed(command, **kw):
    """Seconds one command took (wall clock, and CPU: its user + system time), and the
    lines it printed. Its output is counted as it comes and dropped: keeping a gigabyte
    of --json would make the benchmark the slow reader of the pipe. It runs in /tmp:
    `python -m` would import a kamflat from the current directory first."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd="/tmp", **kw)
    lines = 0
    with process.stdout:
        for block in iter(lambda: process.stdout.read1(1 << 20), b""):
            lines += block.count(b"\n")
    if process.wait():
        raise subprocess.CalledProcessError(process.returncode, command)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, lines


def best_of(repeat, commands):
    """Each of `commands` (name -> (command, env)) run `repeat` times, in turn: the
    fastest wall clock and CPU seconds of each, and the lines it printed."""
    best = {}
    for _ in range(repeat):
        for name, (command, environment) in commands.items():
            wall, cpu, lines = timed(command, env=environment)
            old = best.get(name, (wall, cpu, lines))
            best[name] = (min(wall, old[0]), min(cpu, old[1]), lines)
    return best


def kamflat_command(*args):
    return [sys.executable, "-m", "kamflat", *args]


def env():
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO)
    return environment


def sort_inputs(directory, rotated, scratch):
    """The files sort -m merges: every file `kamflat cat` reads (with --rotated, the
    rotated generations too), a compressed one decompressed into `scratch` first, which
    is not timed: sort -m merges the same set of lines kamflat prints."""
    files = []
    for path in sorted(Path(directory).iterdir()):
        if path.name.endswith(".log"):
            files.append(str(path))
        elif rotated and ".log." in path.name:
            if path.name.endswith(".gz"):
                plain = os.path.join(scratch, path.name[:-len(".gz")])
                with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                files.append(plain)
            else:
                files.append(str(path))
    return files


def decompress_seconds(directory):
    """CPU seconds zlib takes to decompress the .gz files of `directory`, in this process:
    the part of `cat --rotated` no reader of those files can avoid."""
    start = time.process_time()
    for path in Path(directory).glob("*.gz"):
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    return time.process_time() - start


def bench_cat(directory, records, rotated, repeat=1):
    scratch = tempfile.mkdtemp(prefix="bench_read_sort.")
    try:
        files = sort_inputs(directory, rotated, scratch)
        print("%d records in %d files%s" % (records, len(list(Path(directory).iterdir())),
                                           " (live, rotated and gzip'ed)" if rotated else ""))
        extra = ["--rotated"] if rotated else []
        best = best_of(repeat, {
            "sort": (["sort", "-m", "-s", "-t|", "-k7,7n"] + files, dict(os.environ, LC_ALL="C")),
            "cat": (kamflat_command("cat", "--dir", directory, *extra, "acc"), env()),
            "json": (kamflat_command("cat", "--dir", directory, "--json", *extra, "acc"), env()),
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (base, base_cpu, base_lines), (cat, cat_cpu, lines), (js, js_cpu, _) = (
        best["sort"], best["cat"], best["json"])
    if repeat > 1:
        print("(fastest of %d runs each, taken in turn)" % repeat)
    print("%-22s %7.2f s %10.0f rec/s  cpu %.2f s" % ("sort -m (baseline)", base, lines / base,
                                                     base_cpu)
          + ("  (the same %d lines: the .gz files decompressed before, not timed)" % base_lines
             if rotated else ""))
    print("%-22s %7.2f s %10.0f rec/s  %.2fx sort -m (target >= 0.3); cpu %.2f s, %.2fx"
          % ("kamflat cat", cat, lines / cat, base / cat, cat_cpu, base_cpu / cat_cpu))
    print("%-22s %7.2f s %10.0f rec/s  %.2fx kamflat cat (target >= 0.5); cpu %.2f s, %.2fx"
          % ("kamflat cat --json", js, lines / js, cat / js, js_cpu, cat_cpu / js_cpu))
    if rotated:
        print("%-22s %7.2f s cpu (zlib alone, in this process; kamflat cat does it too)"
              % ("gzip decompression", decompress_seconds(directory)))


def bench_follow(directory, seconds):
    """A writer appends as fast as it can for `seconds` while `kamflat follow` prints."""
    follow = subprocess.Popen(kamflat_command("follow", "--dir", directory, "--new", "acc"),
                              stdout=subprocess.PIPE, env=env(), cwd="/tmp")
    seen = [0]

    def count():
        for chunk in iter(lambda: follow.stdout.read1(1 << 16), b""):
            seen[0] += chunk.count(b"\n")
    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    time.sleep(1.0)                     # follow is watching before the first write
    conn = kamflat.connect("flatstore:" + directory, rank=9, flush=True)
    conn.use_table("acc")
    generator = CallGenerator(seed=2, cps=1000, extra=True)
    records = (r["values"] for r in generator.records() if r["table"] == "acc")
    written, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            conn.insert(None, next(records))
        written += 1000
    write_seconds = time.perf_counter() - start
    conn.close()
    lag = written - seen[0]
    deadline = time.monotonic() + 60
    while seen[0] < written and time.monotonic() < deadline:
        time.sleep(0.01)
    caught_up = time.perf_counter() - start - write_seconds
    follow.terminate()
    follow.wait(10)
    print("follow: writer %.0f rec/s for %.1f s; lag at the end of the write %d records; "
          "caught up %.2f s later (%d of %d printed)"
          % (written / write_seconds, write_seconds, lag, caught_up, seen[0], written))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--cps", type=float, default=200.0,
                        help="call attempts per simulated second (how many records share a "
                             "time value)")
    parser.add_argument("--rotated", action="store_true",
                        help="also a rotated and a gzip'ed generation of each file")
    parser.add_argument("--follow-seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run sort -m, cat and cat --json this many times, in turn, and "
                             "keep the fastest of each (a loaded machine)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_read.")
    try:
        records = make_files(tmp, args.records, args.files, args.cps)
        if args.rotated:
            records += make_files(tmp, args.records, args.files, args.cps, seed=3,
                                  suffix=".1")
            records += make_files(tmp, args.records, args.files, args.cps, seed=4,
                                  suffix=".2")
            for path in Path(tmp).glob("*.log.2"):
                with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
        bench_cat(tmp, records, args.rotated, args.repeat)
        if args.follow_seconds > 0:
            follow_dir = os.path.join(tmp, "follow")
            os.mkdir(follow_dir)
            bench_follow(follow_dir, args.follow_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
