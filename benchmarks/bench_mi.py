"""MI FIFO round trip: kamflat's MIFifoServer against a bare FIFO responder and Kamailio 3.3.

    PYTHONPATH=. python3 benchmarks/bench_mi.py [-n 1000]

Each server runs in its own process. Measured as Kamailio 3.3 was recorded: the
client makes its reply FIFO and opens it for reading (not timed), then the time
runs from the request's open/write/close on the server FIFO to EOF on the reply
FIFO. "Full cycle" also times mkfifo, open and unlink, as `kamflat fifo` does.
The baseline, measured in the same run, is a minimal Python responder (blocking
read, fixed `200 OK` reply, no parsing, no checks): the floor for Python here.
Both servers run side by side and are measured in alternating rounds
(`--rounds`), so a change in the machine's load during the run weighs on both.

Where the scheduler puts the two ends decides most of a round trip this short: a
wake-up on another, idle CPU costs tens of microseconds on a VM, one on the same CPU a
few. Left to itself, the scheduler picks one or the other from run to run (the bare
responder was measured at 9.5 and at 54 us, in two runs a minute apart), so the ratio
was whatever the placement was. The rounds therefore run in fixed placements, the same
for both servers: "one CPU" pins the client and the servers to one CPU (the round trip
is then the CPU work of both ends, which is what the server's code decides), "two CPUs"
pins the servers to one CPU and the client to another (every request and every reply
is a cross-CPU wake-up). The target (<= 3x the responder) holds for each; `--free`
adds rounds without pinning, as the figures before this were measured.
With `--serve N` the kamflat side is a whole `kamflat serve` with N writers, so
the time includes the rotation itself (every writer closing its files).
"""
import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchserver import BenchServer                                        # noqa: E402

from kamflat.mgmt.manage import Management                                # noqa: E402
from kamflat.tools.fifoclient import exchange, make_reply_fifo, read_reply, write_request  # noqa: E402
from kamflat.server.mi_fifo import MIFifoServer                              # noqa: E402

KAMAILIO_33 = {"median": 79.5, "p99": 161.0, "full": 122.7}      # us, spec section 2 (Latency)


def run_kamflat(path, ready, stop):
    server = MIFifoServer(path, management=Management.standalone())
    server.open()
    ready.set()
    try:
        server.serve(stop)
    finally:
        server.close()


def run_baseline(path, ready, stop):
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)
    ready.set()
    buf = b""
    while not stop.is_set():
        buf += os.read(fd, 65536)
        while b"\n\n" in buf:
            request, buf = buf.split(b"\n\n", 1)
            name = request.split(b"\n", 1)[0].split(b":", 2)[2].decode()
            out = os.open("/tmp/" + name, os.O_WRONLY | os.O_NONBLOCK)
            os.write(out, b"200 OK\n\n")
            os.close(out)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(path, n, full):
    """n flat_rotate round trips; returns the latencies in microseconds."""
    name = "bench_mi_%d" % os.getpid()
    reply_path = "/tmp/" + name
    request = b":flat_rotate:%s\n\n" % name.encode()
    times = []
    for _ in range(n):
        if full:
            start = time.perf_counter()
            reply = exchange(path, request, reply_path, 5.0)
            times.append((time.perf_counter() - start) * 1e6)
        else:
            fd = make_reply_fifo(reply_path)
            start = time.perf_counter()
            write_request(path, request, 5.0)
            reply = read_reply(fd, 5.0)
            times.append((time.perf_counter() - start) * 1e6)
            os.close(fd)
            os.unlink(reply_path)
        assert reply == b"200 OK\n\n", reply
    return times


def placements(free):
    """(label, CPUs for the servers, CPU for the client) of every placement measured; the
    CPUs are those this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    chosen = [("one CPU", {cpus[-1]}, {cpus[-1]})]
    if len(cpus) > 1:
        chosen.append(("two CPUs", {cpus[-1]}, {cpus[0]}))
    if free:
        chosen.append(("free", set(cpus), set(cpus)))
    return chosen


def pin(pids, cpus):
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


def start(target):
    """One server process; (path, stop, pids) once it is ready."""
    path = os.path.join(tempfile.mkdtemp(prefix="bench_mi_"), "fifo")
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=target, args=(path, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(10):
        raise SystemExit("server did not start")

    def finish():
        stop.set()
        try:
            write_request(path, b"\n", 1.0)      # wake the blocking baseline
        except Exception:
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))
    return path, finish, [proc.pid]


def start_serve(children):
    """A whole `kamflat serve` with `children` writers; (MI FIFO path, finish, pids)."""
    directory = tempfile.mkdtemp(prefix="bench_mi_serve_")
    server = BenchServer(directory, children=children)
    server.start(30)

    def finish():
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return server.mi_fifo, finish, server.pids()


def bench(starters, n, rounds, where):
    """Start every server (`starters`: name -> function returning (path, finish, pids));
    then, in each placement of `where`, warm each up and measure them in alternating
    rounds, both ways; {placement: {name: (pre-opened times, full-cycle times)}}."""
    servers, times = {}, {}
    client = os.sched_getaffinity(0)
    try:
        for name, starter in starters.items():
            servers[name] = starter()
        for label, server_cpus, client_cpus in where:
            times[label] = {name: ([], []) for name in servers}
            for _, _, pids in servers.values():
                pin(pids, server_cpus)
            os.sched_setaffinity(0, client_cpus)
            for path, _, _ in servers.values():
                measure(path, 50, False)
            for r in range(rounds):
                count = n // rounds + (r < n % rounds)
                for full in (False, True):
                    for name, (path, _, _) in servers.items():
                        times[label][name][full].extend(measure(path, count, full))
        return times
    finally:
        os.sched_setaffinity(0, client)
        for _, finish, _ in servers.values():
            finish()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=10,
                        help="alternating rounds the requests are spread over")
    parser.add_argument("--serve", type=int, metavar="N",
                        help="measure a whole `kamflat serve` with N writers instead of "
                             "an MIFifoServer without writers")
    parser.add_argument("--free", action="store_true",
                        help="also measure without pinning (the scheduler places both ends)")
    args = parser.parse_args()
    n = args.n
    multiprocessing.set_start_method("fork")
    kamflat = ("kamflat serve, %d writers" % args.serve if args.serve
               else "kamflat MIFifoServer")
    times = bench({"baseline": lambda: start(run_baseline),
                   kamflat: (lambda: start_serve(args.serve)) if args.serve
                   else lambda: start(run_kamflat)},
                  n, max(1, min(args.rounds, n)), placements(args.free))
    print("flat_rotate over the MI FIFO, %d requests each per placement (microseconds); "
          "load average %.2f on %d CPUs" % (n, os.getloadavg()[0], os.cpu_count()))
    print("%-46s %9s %9s %9s %9s" % ("", "median", "p99", "max", "full"))
    print("%-46s %9.1f %9.1f %9s %9.1f" % ("Kamailio 3.3.7 (recorded, 200 runs)",
          KAMAILIO_33["median"], KAMAILIO_33["p99"], "-", KAMAILIO_33["full"]))
    for label, by_name in times.items():
        for name, title in (("baseline", "bare Python responder"), (kamflat, kamflat)):
            rt, full = by_name[name]
            print("%-46s %9.1f %9.1f %9.1f %9.1f" % ("%s, %s" % (title, label),
                  statistics.median(rt), percentile(rt, 99), max(rt), statistics.median(full)))
    print("(full: the whole client cycle, mkfifo, open, write, read to EOF, unlink)")
    for label, by_name in times.items():
        med, p99 = statistics.median(by_name[kamflat][0]), percentile(by_name[kamflat][0], 99)
        ratio = med / statistics.median(by_name["baseline"][0])
        if args.serve:      # the writers' rotation is in it: issue 15's targets are not for this
            print("%s: kamflat / responder median %.2fx; p99 %.0f us; kamflat / Kamailio "
                  "3.3.7 median %.2fx" % (label, ratio, p99, med / KAMAILIO_33["median"]))
            continue
        print("%s: kamflat / responder median %.2fx (target <= 3x) %s; p99 %.0f us (target "
              "<= 1000 us) %s; kamflat / Kamailio 3.3.7 median %.2fx"
              % (label, ratio, "OK" if ratio <= 3 else "MISSED", p99,
                 "OK" if p99 <= 1000 else "MISSED", med / KAMAILIO_33["median"]))


if __name__ == "__main__":
    main()
