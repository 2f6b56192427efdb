"""Round-trip latency of flatstore.rotate over the JSON-RPC FIFO and over binrpc (kamcmd).

    python3 benchmarks/bench_rpc.py [--calls N]

Measures kamflat's servers (each in its own process, Management.standalone()) and,
when the Debian package is installed, a real Kamailio 5.6 started here as the
baseline of the same run; prints both beside the figures recorded on the reference
machine (spec kamailio-5.6-observed.md section 6) and the kamflat/Kamailio ratio.
Both servers run side by side and are measured in alternating rounds (`--rounds`),
so a change in the machine's load during the run weighs on both.
"""
import argparse
import multiprocessing
import os
import select
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchserver import KAMAILIO, MODULES, RPC_CFG, free_port  # noqa: E402
from kamflat.server.ctl import CtlServer                      # noqa: E402
from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer     # noqa: E402
from kamflat.mgmt.manage import Management                  # noqa: E402

RECORDED = {"write->EOF, reply FIFO pre-opened": 0.091, "full client cycle": 0.141,
            "kamcmd (spawn + binrpc)": 1.48}
REQUEST = ('{"jsonrpc": "2.0", "method": "flatstore.rotate", "reply_name": "%s", '
           '"id": 1}\n')


def run_server(make, ready):
    server = make()
    server.open()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready.set()
    server.serve(stop)
    server.close()


def start_kamflat(workdir):
    ctx = multiprocessing.get_context("fork")
    fifo, ctl = str(workdir / "rpc.fifo"), "unixs:%s/ctl" % workdir
    procs = []
    for make in (lambda: JsonRpcFifoServer(fifo, management=Management.standalone()),
                 lambda: CtlServer(ctl, management=Management.standalone())):
        ready = ctx.Event()
        proc = ctx.Process(target=run_server, args=(make, ready), daemon=True)
        proc.start()
        ready.wait(10)
        procs.append(proc)

    def stop():
        for proc in procs:
            proc.terminate()
            proc.join(5)
    return fifo, ctl, stop


def start_kamailio(workdir):
    """A real Kamailio 5.6 with jsonrpcs and ctl (the config the tests compare against),
    or None if it is not installed."""
    if not (os.access(KAMAILIO, os.X_OK) and os.path.isdir(MODULES)):
        print("bench_rpc: no Kamailio side (%s not installed): the recorded figures are "
              "the baseline" % KAMAILIO, file=sys.stderr)
        return None
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(string.Template(RPC_CFG.read_text()).substitute(
        port=free_port(), dir=workdir, modules=MODULES))
    log = open(workdir / "kamailio.log", "w")
    proc = subprocess.Popen([KAMAILIO, "-DD", "-E", "-f", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    fifo, ctl = workdir / "kamailio_rpc.fifo", workdir / "kamailio_ctl"
    deadline = time.monotonic() + 15
    while not (fifo.exists() and ctl.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            print("Kamailio did not start, see %s" % (workdir / "kamailio.log"))
            return None
        time.sleep(0.02)
    time.sleep(0.2)     # let its worker processes settle

    def stop():
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()
    return str(fifo), "unixs:%s" % ctl, stop


def read_to_eof(fd, timeout=10.0):
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([fd], [], [], 0.5)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:       # a writer is connected, nothing written yet
            continue
        if chunk:
            got += chunk
        elif got:
            return got
    raise RuntimeError("no complete reply within %.0fs (got %r)" % (timeout, got))


def send(fifo, data):
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, data)
    os.close(fd)


def bench_preopened(fifo, calls):
    """The reply FIFO is opened for reading before each timed call (not timed): a read
    end kept open from one call to the next would see the last call's hang-up and spin
    in read_to_eof until the server opens it, taking the CPU from the server."""
    name = "kfbench_pre_%d" % os.getpid()
    path = "/tmp/" + name
    os.mkfifo(path, 0o600)
    request = (REQUEST % name).encode()
    times = []
    try:
        for _ in range(calls):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                t0 = time.perf_counter()
                send(fifo, request)
                read_to_eof(fd)
                times.append(time.perf_counter() - t0)
            finally:
                os.close(fd)
    finally:
        os.unlink(path)
    return times


def bench_full_cycle(fifo, calls):
    name = "kfbench_full_%d" % os.getpid()
    path = "/tmp/" + name
    request = (REQUEST % name).encode()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        send(fifo, request)
        read_to_eof(fd)
        os.close(fd)
        os.unlink(path)
        times.append(time.perf_counter() - t0)
    return times


def bench_kamcmd(ctl, calls):
    kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        subprocess.run([kamcmd, "-s", ctl, "flatstore.rotate"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def summary(times):
    ms = sorted(t * 1000 for t in times)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


def measure(sides, calls, rounds):
    """{side: {what: (median, p99)}} for every side ((fifo, ctl) by name), the calls
    spread over `rounds` rounds in which the sides take turns."""
    kinds = {"write->EOF, reply FIFO pre-opened": (bench_preopened, 0, calls),
             "full client cycle": (bench_full_cycle, 0, calls)}
    if shutil.which("kamcmd") or os.path.exists("/usr/sbin/kamcmd"):
        kinds["kamcmd (spawn + binrpc)"] = (bench_kamcmd, 1, max(calls // 4, 20))
    times = {side: {what: [] for what in kinds} for side in sides}
    for fifo, _ in sides.values():
        bench_preopened(fifo, 20)               # warm up
    for r in range(rounds):
        for what, (run, address, total) in kinds.items():
            count = total // rounds + (r < total % rounds)
            for side, addresses in sides.items():
                times[side][what] += run(addresses[address], count)
    return {side: {what: summary(t) for what, t in got.items()} for side, got in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10,
                        help="alternating rounds the calls are spread over")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, max(args.calls // 4, 20)))
    with tempfile.TemporaryDirectory(prefix="kfbench") as tmp:
        tmp = Path(tmp)
        (tmp / "kamflat").mkdir()
        (tmp / "kamailio").mkdir()
        fifo, ctl, stop = start_kamflat(tmp / "kamflat")
        kamailio = None
        try:
            kamailio = start_kamailio(tmp / "kamailio")
            sides = {"kamflat": (fifo, ctl)}
            if kamailio:
                sides["kamailio"] = kamailio[:2]
            got = measure(sides, args.calls, rounds)
        finally:
            stop()
            if kamailio:
                kamailio[2]()
        mine, theirs = got["kamflat"], got.get("kamailio", {})
    print("flatstore.rotate round trip, %d calls (ms, median / p99)" % args.calls)
    print("%-36s %17s %17s %9s %10s" % ("", "kamflat", "Kamailio 5.6 now", "ratio",
                                        "recorded"))
    for what, (median, p99) in mine.items():
        k = theirs.get(what)
        print("%-36s %7.3f / %7.3f %7s / %7s %8s %10.3f" % (
            what, median, p99, "%.3f" % k[0] if k else "-", "%.3f" % k[1] if k else "-",
            "%.2fx" % (median / k[0]) if k else "-", RECORDED[what]))
    if not theirs:
        print("(no Kamailio installed here: compare with the recorded medians)")


if __name__ == "__main__":
    main()
