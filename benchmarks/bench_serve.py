"""End-to-end throughput of `kamflat serve`: records from the Python client to disk.

For children=2 and 4, flush=1 and 0, it starts a real server, sends N acc records
through the ingest socket (the client waits for `done`, i.e. everything written),
stops the server, counts the lines on disk (zero loss is checked, not assumed),
and prints records/s beside the C loop of ../shared/bench/flatloop.c run in the
same invocation, with the ratio. Writer memory is the peak (VmHWM, read from
/proc once the records are written, before the stop): what a writer took under load.

    python benchmarks/bench_serve.py [--records 300000] [--rounds 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kamflat.client import send_bytes  # noqa: E402
from benchserver import BenchServer as Server  # noqa: E402


def find_flatloop():
    for candidate in (HERE.parent.parent / "shared" / "bench" / "flatloop.c",
                      HERE / "flatloop.c"):
        if candidate.exists():
            return candidate
    raise SystemExit("flatloop.c not found (../shared/bench or benchmarks/)")


def c_rate(binary, records, flush, tmp):
    out = subprocess.run([str(binary), str(records), str(flush), str(Path(tmp) / "c.log")],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(Path(tmp) / "c.log")
    return float(out.split("rate=")[1].split("/")[0])


def payload(records):
    line = ('{"table":"acc","values":["INVITE","as2f9a1c2e","1928301774","%d-3848276298220188511'
            '@127.0.0.1",200,"OK",1795763336,"alice","example.com","bob"]}\n')
    return [("".join(line % i for i in range(start, min(start + 5000, records)))).encode()
            for start in range(0, records, 5000)]


def writer_rss_kb(server):
    """The largest peak RSS (VmHWM) of the writer processes (the `writer child=` rows of
    ps); VmRSS, read after the load, would miss memory freed since."""
    pids = [int(line.split("PID=")[1].split()[0])
            for line in server.mi("ps").decode().splitlines() if "writer child=" in line]
    rss = []
    for pid in pids:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss.append(int(line.split()[1]))
    return max(rss)


def kamflat_rate(records, children, flush, blocks):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(tmp, children=children, flush=flush).start()
        try:
            start = time.perf_counter()
            result = send_bytes(str(server.ingest), iter(blocks), timeout=120)
            elapsed = time.perf_counter() - start
            rss = writer_rss_kb(server)
        finally:
            server.stop()
        on_disk = sum(1 for _ in server.lines())
        assert result.written == records == on_disk, (result, on_disk)
        return records / elapsed, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    blocks = payload(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "flatloop"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(find_flatloop())], check=True)
        print("records per run: %d, rounds: %d (medians)" % (args.records, args.rounds))
        print("%-22s %12s %12s %7s %10s" % ("run", "kamflat/s", "C loop/s", "ratio",
                                             "max RSS"))
        for flush in (1, 0):
            for children in (2, 4):
                ours, theirs, rss = [], [], []
                for _ in range(args.rounds):
                    rate, kb = kamflat_rate(args.records, children, flush, blocks)
                    ours.append(rate)
                    rss.append(kb)
                    theirs.append(c_rate(binary, args.records, flush, tmp))
                k, c = statistics.median(ours), statistics.median(theirs)
                print("%-22s %12.0f %12.0f %7.3f %7.1f MB" % (
                    "children=%d flush=%d" % (children, flush), k, c, k / c, max(rss) / 1024))


if __name__ == "__main__":
    main()
