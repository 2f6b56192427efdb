"""`kamflat cat --json` with its forked converter (kamflat.tools.catproc), end to end: the
bytes are those of cat in one process, and a converter that dies, a reader that goes
away and ^C each end cat cleanly."""
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import kamflat_argv, kamflat_env, wait_until
from kamflat.flatstore.record import make_encoder
from kamflat.tools import cat, catproc
from kamflat.tools.gen import EDGE_CASES, CallGenerator

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="the converter is forked only with two CPUs")

EXTRA = "src_user=$fU;src_domain=$fd;dst_ouser=$tU"

# Blocks that do not take the uniform way, or whose keys need the record before: JSON
# escapes, bytes that are not UTF-8, a folded header, a time that is no number, fewer
# and more fields.
ODD_RECORDS = [b'INVITE|ft"q|tt|c\\x|200|OK|%d|a|b|c',
               b"INVITE|ft\xff|tt|c|200|OK|%d|a|b|c",
               b"INVITE|ft|tt|c\r\n folded|200|OK|%d|a|b|c",
               b"INVITE|ft|tt|c|200|OK|later|a|b|c",
               b"BYE|ft|tt|c|200|OK|%d",
               b"INVITE|ft|tt|c|200|OK|%d|a|b|c|d|e"]


@pytest.fixture(scope="module")
def acc_dir(tmp_path_factory):
    """Four writers' files, 1.5 MB each (more than SPLIT_MIN_BYTES in all), with every
    edge case of gen and the odd records above here and there."""
    directory = tmp_path_factory.mktemp("acc")
    (directory / "kamflat.cfg").write_text(
        'loadmodule "db_flatstore.so"\nloadmodule "acc.so"\nmodparam("acc", "db_url", "flatstore:%s")\n'
        'modparam("acc", "db_extra", "%s")\n' % (directory, EXTRA))
    encode = make_encoder()
    outs = [open(directory / ("acc_%d.log" % (129 + i)), "wb") for i in range(4)]
    records = (r for r in CallGenerator(seed=7, cps=300, extra=True,
                                        edge_cases=EDGE_CASES).records()
               if r["table"] == "acc")
    for n, record in enumerate(records):
        out = outs[n % 4]
        out.write(encode(record["values"]))
        if n % 997 == 0:
            odd = ODD_RECORDS[(n // 997) % len(ODD_RECORDS)]
            out.write((odd % record["values"][6] if b"%d" in odd else odd) + b"\n")
        if out.tell() > 1_500_000 and n % 4 == 3:
            break
    for out in outs:
        out.close()
    assert sum(p.stat().st_size for p in directory.glob("*.log")) > catproc.SPLIT_MIN_BYTES
    return directory


def one_cpu():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def start_cat(*args, **kwargs):
    return subprocess.Popen(kamflat_argv("cat", *args), env=kamflat_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.parametrize("args", [
    ["--json"],
    ["--json", "--decode"],
    ["--json", "--keys", "m,ft,tt,ci,code,reason,time"],
    ["--json", "--keys", "m,ft,m"],          # a repeated key: record by record
    ["--json", "--keys", ""],                # no time column: files one after the other
])
def test_converter_prints_the_bytes_of_cat_in_one_process(acc_dir, args):
    proc = start_cat("-f", acc_dir / "kamflat.cfg", *args, "acc")
    # cat is blocked on its stdout, not read yet: its converter is there
    wait_until(lambda: children_of(proc.pid), what="the converter")
    two, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""
    one = subprocess.run(kamflat_argv("cat", "-f", acc_dir / "kamflat.cfg", *args, "acc"),
                         env=kamflat_env(), capture_output=True, timeout=120,
                         preexec_fn=one_cpu)
    assert one.returncode == 0 and one.stderr == b""
    assert two == one.stdout
    assert two.count(b"\n") > 20000


def test_a_killed_converter_fails_cat_with_whole_lines_printed(acc_dir):
    whole = subprocess.run(kamflat_argv("cat", "--dir", acc_dir, "--json", "acc"),
                           env=kamflat_env(), capture_output=True, timeout=120).stdout
    proc = start_cat("--dir", acc_dir, "--json", "acc")
    converter = wait_until(lambda: children_of(proc.pid), what="the converter")[0]
    first = proc.stdout.read(1 << 16)      # cat is under way (then blocked on its stdout)
    os.kill(converter, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    out = first + out
    assert proc.returncode == 2
    assert b"the JSON converter process was killed by signal 9" in err
    assert b"Traceback" not in err
    assert out.endswith(b"\n") and whole.startswith(out)   # whole lines, as far as it got
    assert len(out) < len(whole)


def test_a_reader_that_goes_ends_cat_and_its_converter_quietly(acc_dir):
    proc = start_cat("--dir", acc_dir, "--json", "acc")
    converter = wait_until(lambda: children_of(proc.pid), what="the converter")[0]
    assert proc.stdout.readline().startswith(b'{"table": "acc"')
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == b""
    assert not os.path.exists("/proc/%d" % converter)   # reaped by cat


def test_interrupt_ends_cat_and_its_converter(acc_dir):
    proc = start_cat("--dir", acc_dir, "--json", "acc", start_new_session=True)
    converter = wait_until(lambda: children_of(proc.pid), what="the converter")[0]
    os.killpg(proc.pid, signal.SIGINT)      # ^C: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    assert not os.path.exists("/proc/%d" % converter)


NOBODY = 65534


def test_no_fork_left_cat_prints_in_one_process(acc_dir):
    """At the process limit, cat reads as one process: the same bytes, status 0. cat runs
    in a forked child as an unprivileged uid held to one process (root is not held to
    RLIMIT_NPROC), in the test's interpreter (that uid cannot reach this Python)."""
    base = tempfile.mkdtemp(prefix="kamflat-nproc-")     # reachable by that uid
    try:
        os.chmod(base, 0o755)
        for path in acc_dir.glob("*.log"):
            shutil.copy(path, base)
        args = ["--dir", base, "--json", "acc"]
        one = subprocess.run(kamflat_argv("cat", *args), env=kamflat_env(),
                             capture_output=True, timeout=120, preexec_fn=one_cpu)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 3
            try:
                os.close(read_end)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
                sys.stdout = io.TextIOWrapper(os.fdopen(write_end, "wb"))
                status = cat.run("cat", args)
                sys.stdout.flush()
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as printed:
            limited = printed.read()
        assert os.waitpid(pid, 0)[1] == 0
        assert limited == one.stdout and one.stdout.count(b"\n") > 20000
    finally:
        shutil.rmtree(base, ignore_errors=True)
