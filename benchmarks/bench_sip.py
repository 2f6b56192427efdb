"""Accounted SIP requests/s with zero loss: the real Kamailio 5.6 and kamflat, same run.

One bounded closed-loop generator (sipload.c, compiled here with gcc: WINDOW INVITEs
outstanding, unique Call-IDs, SECONDS long) is pointed first at Kamailio running the
reference config (tests/data/acc_sip, moved to a temp dir and a free port), then at
kamflat. Each side is then checked for loss: the acc lines carrying the run's Call-ID
prefix must equal the replies received. Printed: both rates, CPU seconds the servers
used per 1000 requests, and the ratio kamflat/Kamailio. Rounds alternate the two
servers and the median ratio is printed, as the machine may be shared.

kamflat's side is the real `kamflat serve` with the same children, db_extra and
replies, flush=1: its writer processes receive from the shared UDP socket, answer,
and write each record before its reply.

Then a scaling table: one round each with children 1, 2 and 4, both servers' rates,
their ratio, and the CPU each used per 1000 requests (kamflat's target: at most 2x).

    python3 benchmarks/bench_sip.py [--seconds 5] [--window 32] [--children 4] [--rounds 3]
                                    [--scaling 1,2,4]
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchserver import KAMAILIO, SIP_CFG as REFERENCE, free_port  # noqa: E402
from benchserver import BenchServer as Server  # noqa: E402

EXTRA = "src_user=$fU;src_domain=$fd;dst_ouser=$tU"


def build_generator(tmp):
    binary = Path(tmp) / "sipload"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "sipload.c")], check=True)
    return binary


def answers(port):
    probe = (b"OPTIONS sip:p@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-p"
             b";rport\r\nFrom: <sip:p@x>;tag=p\r\nTo: <sip:p@x>\r\nCall-ID: probe\r\n"
             b"CSeq: 1 OPTIONS\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        s.sendto(probe % s.getsockname()[1], ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def wait_answering(port, procs, timeout=15):
    deadline = time.monotonic() + timeout
    while not answers(port):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("server on port %d did not answer" % port)


def run_load(generator, port, window, seconds, prefix):
    out = subprocess.run([str(generator), "127.0.0.1", str(port), str(window), str(seconds),
                          prefix], capture_output=True, text=True, check=True,
                         timeout=seconds + 30).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out)}


def count_lines(acc_dir, prefix):
    needle = ("|%s-" % prefix).encode()
    return sum(path.read_bytes().count(needle) for path in Path(acc_dir).glob("acc_*.log"))


def cpu_seconds(pids):
    """utime+stime of the processes (and their reaped children), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def tree_pids(root):
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path("/proc/%d/task" % pid).glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return pids


def measure(name, pids_of, port, procs, acc_dir, generator, args, prefix):
    wait_answering(port, procs)
    pids = pids_of()
    cpu0 = cpu_seconds(pids)
    result = run_load(generator, port, args.window, args.seconds, prefix)
    cpu = cpu_seconds(pids) - cpu0
    deadline = time.monotonic() + 10
    while count_lines(acc_dir, prefix) < result["replies"] and time.monotonic() < deadline:
        time.sleep(0.05)
    result["lines"] = count_lines(acc_dir, prefix)
    result["rate"] = result["replies"] / args.seconds
    result["cpu_ms_per_1000"] = 1000 * cpu / max(result["replies"], 1) * 1000
    zero_loss = result["lines"] == result["replies"] == result["sent"] and not result["lost"]
    result["zero_loss"] = zero_loss
    print("%-9s %8.0f accounted req/s  sent=%d replies=%d lost=%d acc_lines=%d %s  "
          "server CPU %.1f ms per 1000 requests"
          % (name, result["rate"], result["sent"], result["replies"], result["lost"],
             result["lines"], "zero loss" if zero_loss else "LOSS", result["cpu_ms_per_1000"]))
    return result


def run_kamailio(tmp, generator, args):
    port = free_port()
    text = REFERENCE.read_text().replace("/var/run/k56", str(tmp)).replace(
        "listen=udp:127.0.0.1:5070", "listen=udp:127.0.0.1:%d" % port)
    text = text.replace("children=4", "children=%d" % args.children)
    for sub in ("acc", "run"):
        (tmp / sub).mkdir()
    cfg = tmp / "kamailio.cfg"
    cfg.write_text(text)
    log = open(tmp / "kamailio.log", "wb")
    proc = subprocess.Popen([KAMAILIO, "-DD", "-E", "-f", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return measure("kamailio", lambda: tree_pids(proc.pid), port, [proc], tmp / "acc",
                       generator, args, "kam")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        log.close()


def run_kamflat(tmp, generator, args):
    """The real `kamflat serve`, configured like the reference config."""
    port = free_port()
    extra = ('modparam("acc", "db_extra", "%s")\n'
             'modparam("kamflat", "sip_reply", "OTHER=404 Not here")\n'
             "listen=udp:127.0.0.1:%d\n" % (EXTRA, port))
    server = Server(tmp, children=args.children, flush=1, extra=extra).start()
    try:
        return measure("kamflat", server.pids, port, [server.proc], server.acc,
                       generator, args, "kfl")
    finally:
        server.stop()


def one_round(tmp, generator, args, children, n):
    """Kamailio then kamflat with `children` processes each: (kamailio, kamflat) results."""
    run_args = argparse.Namespace(**dict(vars(args), children=children))
    (tmp / ("k%d-%d" % (children, n))).mkdir()
    (tmp / ("f%d-%d" % (children, n))).mkdir()
    kam = run_kamailio(tmp / ("k%d-%d" % (children, n)), generator, run_args)
    flat = run_kamflat(tmp / ("f%d-%d" % (children, n)), generator, run_args)
    return kam, flat


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--children", type=int, default=4,
                        help="children of both servers for the main rounds (the sample "
                             "config's 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scaling", default="1,2,4",
                        help="children counts for the scaling table, one round each "
                             "('' for none)")
    args = parser.parse_args()
    if not os.access(KAMAILIO, os.X_OK):
        raise SystemExit("%s not installed (Debian package kamailio)" % KAMAILIO)
    print("bench_sip: window=%d seconds=%g children=%d, %d CPUs; generator sipload.c "
          "(closed loop, loopback UDP)" % (args.window, args.seconds, args.children,
                                            os.cpu_count()))
    print("kamflat side: `kamflat serve` (flush=1), the same db_extra and replies")
    ratios, all_zero_loss = [], True
    table = {}
    with tempfile.TemporaryDirectory(prefix="bench_sip.") as tmp:
        tmp = Path(tmp)
        generator = build_generator(tmp)
        for n in range(args.rounds):       # alternate, so load from elsewhere hits both
            kam, flat = one_round(tmp, generator, args, args.children, n)
            ratios.append(flat["rate"] / kam["rate"])
            all_zero_loss &= kam["zero_loss"] and flat["zero_loss"]
            table.setdefault(args.children, (kam, flat))
        if ratios:
            print("ratio kamflat/kamailio: median %.2f over %d rounds (%s) (target >= 0.5)%s"
                  % (statistics.median(ratios), len(ratios),
                     " ".join("%.2f" % r for r in ratios),
                     "" if all_zero_loss else "  [a side lost requests]"))
        counts = [int(c) for c in args.scaling.split(",") if c.strip()]
        for children in counts:
            if children not in table:
                table[children] = one_round(tmp, generator, args, children, 0)
    if counts:
        print_scaling([(c, table[c][0], table[c][1]) for c in counts])
    return 0


def print_scaling(rows):
    print("\nscaling (one round each):")
    print("%8s %14s %14s %6s %18s %18s %8s" % (
        "children", "kamailio req/s", "kamflat req/s", "ratio", "kamailio CPU/1000",
        "kamflat CPU/1000", "CPU x"))
    for children, kam, flat in rows:
        print("%8d %14.0f %14.0f %6.2f %15.1f ms %15.1f ms %8.2f" % (
            children, kam["rate"], flat["rate"], flat["rate"] / kam["rate"],
            kam["cpu_ms_per_1000"], flat["cpu_ms_per_1000"],
            flat["cpu_ms_per_1000"] / kam["cpu_ms_per_1000"]))


if __name__ == "__main__":
    sys.exit(main())
