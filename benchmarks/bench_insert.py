"""kamflat's flatstore insert path against the C loop of Kamailio's writer (flatloop.c).

Compiles flatloop.c with gcc -O2, then alternates rounds of the C loop and kamflat's
insert() writing the same acc records (same values, a new Call-ID and time() per record)
into files in one temporary directory, for flush=1 and flush=0. Prints records/s for each
and the median ratio kamflat/C (and, less sensitive to other jobs on the machine,
kamflat's best round against C's best round). All timings cover the loop (building each
record's values included, as the C loop formats its Call-ID) and the final close. kamflat
runs as a `kamflat serve` writer does: without a rotation counter (rotation=None: a writer
is told to rotate by a control message). A naive Python loop and a floor (the same loop writing a line prepared
beforehand: the best any Python insert() could do here) run in the same rounds as
reference points. The first round checks that C, kamflat and the naive loop wrote the
same records, byte for byte apart from the time column.

    python3 benchmarks/bench_insert.py [--records N] [--rounds R] [--flatloop PATH]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import kamflat  # noqa: E402  (after the path set-up, to use this checkout)

# The recorded copy in this checkout, else the shared one beside the repository.
FLATLOOP_CANDIDATES = [
    Path(__file__).resolve().parent / "flatloop.c",
    REPO.parent / "shared" / "bench" / "flatloop.c",
]


def compile_flatloop(source, workdir):
    binary = os.path.join(workdir, "flatloop")
    subprocess.run(["gcc", "-O2", "-o", binary, str(source)], check=True)
    return binary


def run_c(binary, records, flush, path):
    out = subprocess.run([binary, str(records), str(flush), path], check=True,
                         capture_output=True, text=True).stdout
    seconds = float(re.search(r"seconds=([0-9.]+)", out).group(1))
    return records / seconds


def run_kamflat(directory, records, flush):
    """The same record as flatloop.c: fixed strings, a Call-ID from the counter, code 200
    and time(0) as numbers."""
    now = time.time
    conn = kamflat.connect("flatstore:" + directory, rank=1, flush=bool(flush))
    conn.use_table("acc")
    insert = conn.insert
    start = time.perf_counter()
    for i in range(records):
        insert(None, ["INVITE", "as2f9a1c2e", "1928301774",
                      "%d-3848276298220188511@127.0.0.1" % i, 200, "OK", int(now()),
                      "alice", "example.com", "bob"])
    conn.close()
    seconds = time.perf_counter() - start
    return records / seconds


def run_naive(path, records, flush):
    """Reference point: the obvious Python loop (buffered text file, str() and join, no
    escaping, flush() per record for flush=1)."""
    now = time.time
    start = time.perf_counter()
    with open(path, "a") as f:
        for i in range(records):
            f.write("|".join(["INVITE", "as2f9a1c2e", "1928301774",
                              "%d-3848276298220188511@127.0.0.1" % i, str(200), "OK",
                              str(int(now())), "alice", "example.com", "bob"]) + "\n")
            if flush:
                f.flush()
    return records / (time.perf_counter() - start)


def run_floor(path, records, flush):
    """Reference point: the ceiling for any Python insert() in this loop. The same values
    are built, but a line prepared beforehand is written instead of encoding them
    (flush=1: one os.write per record; flush=0: a list joined and written per 64 KiB)."""
    now = time.time
    line = b"INVITE|as2f9a1c2e|1928301774|0-3848276298220188511@127.0.0.1|200|OK|%d|alice|" \
           b"example.com|bob\n" % int(now())
    pending, size = [], 0
    write = os.write
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(records):
        values = ["INVITE", "as2f9a1c2e", "1928301774",  # noqa: F841  (built, not used)
                  "%d-3848276298220188511@127.0.0.1" % i, 200, "OK", int(now()),
                  "alice", "example.com", "bob"]
        if flush:
            write(fd, line)
        else:
            pending.append(line)
            size += len(line)
            if size > 65536:
                write(fd, b"".join(pending))
                pending.clear()
                size = 0
    write(fd, b"".join(pending))
    os.close(fd)
    return records / (time.perf_counter() - start)


def same_records(*paths):
    """Every line of the files must match byte for byte once the time column is blanked."""
    def records(path):
        with open(path, "rb") as f:
            return [re.sub(rb"^((?:[^|]*\|){6})[0-9]+\|", rb"\1T|", line) for line in f]
    first = records(paths[0])
    return all(records(path) == first for path in paths[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--flatloop", type=Path, help="flatloop.c (default: "
                        "benchmarks/flatloop.c)")
    args = parser.parse_args(argv)
    source = args.flatloop or next(p for p in FLATLOOP_CANDIDATES if p.exists())
    workdir = tempfile.mkdtemp(prefix="kamflat-bench-")
    try:
        binary = compile_flatloop(source, workdir)
        c_path = os.path.join(workdir, "c_acc.log")
        kamflat_path = os.path.join(workdir, "acc_129.log")
        naive_path = os.path.join(workdir, "naive_acc.log")
        floor_path = os.path.join(workdir, "floor_acc.log")
        print("flatloop: %s; %d records per run, %d rounds; python %s"
              % (source, args.records, args.rounds, sys.version.split()[0]))
        summary = []
        for flush in (1, 0):
            ratios = {"kamflat": [], "naive": [], "floor": []}
            c_rates, kamflat_rates = [], []
            for round_number in range(args.rounds):
                for path in (c_path, kamflat_path, naive_path, floor_path):
                    if os.path.exists(path):
                        os.unlink(path)
                runs = [("C", lambda: run_c(binary, args.records, flush, c_path)),
                        ("kamflat", lambda: run_kamflat(workdir, args.records, flush)),
                        ("naive", lambda: run_naive(naive_path, args.records, flush)),
                        ("floor", lambda: run_floor(floor_path, args.records, flush))]
                if round_number % 2:
                    runs.reverse()   # alternate the order: neither side always goes first
                rate = {name: run() for name, run in runs}
                if round_number == 0 and not same_records(c_path, kamflat_path, naive_path):
                    sys.exit("kamflat, flatloop.c and the naive loop wrote different records")
                c_rates.append(rate["C"])
                kamflat_rates.append(rate["kamflat"])
                for name, values in ratios.items():
                    values.append(rate[name] / rate["C"])
                print("flush=%d round %d: C %8.0f rec/s  kamflat %8.0f rec/s  ratio %.2f"
                      "   (naive %.2f, floor %.2f)"
                      % (flush, round_number + 1, rate["C"], rate["kamflat"],
                         ratios["kamflat"][-1], ratios["naive"][-1], ratios["floor"][-1]))
            summary.append((flush, statistics.median(c_rates), statistics.median(kamflat_rates),
                            *(statistics.median(ratios[name])
                              for name in ("kamflat", "naive", "floor")),
                            max(kamflat_rates) / max(c_rates)))
        print()
        for flush, c_rate, k_rate, ratio, naive_ratio, floor_ratio, best_ratio in summary:
            target = 0.6 if flush else 0.4
            print("flush=%d median: C %8.0f rec/s  kamflat %8.0f rec/s  ratio %.2f "
                  "(target >= %.1f; naive Python loop %.2f; floor %.2f; best rounds %.2f)"
                  % (flush, c_rate, k_rate, ratio, target, naive_ratio, floor_ratio, best_ratio))
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
