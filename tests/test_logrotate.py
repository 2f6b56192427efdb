"""The shipped logrotate policy, run by the real logrotate against a loaded server."""
import gzip
import os
import shutil
import subprocess
import threading

import pytest

from conftest import REPO, run_kamflat, wait_until
from serverutil import Server
from test_serve import acc_line, check_exactly_once
from kamflat.client import send_bytes

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


CRON_PATH = "/usr/bin:/bin"      # what cron gives a job: no virtualenv on it


def policy_for(server):
    """The policy `kamflat logrotate` prints for this server's config."""
    made = run_kamflat("logrotate", "-f", str(server.config))
    assert made.returncode == 0, made.stderr
    return made.stdout


def test_the_shipped_policy_is_the_one_kamflat_logrotate_prints():
    made = run_kamflat("logrotate", "-f", "conf/kamflat.cfg", "--kamflat", "/usr/local/bin/kamflat",
                       cwd=REPO)
    assert made.returncode == 0, made.stderr
    assert made.stdout == (REPO / "conf" / "logrotate.d" / "kamflat").read_text()


def test_the_policy_names_kamflat_by_an_absolute_path_that_runs(tmp_path):
    with Server(tmp_path, children=1) as server:
        rotate = [line.strip() for line in policy_for(server).splitlines()
                  if " flat_rotate" in line]
        assert len(rotate) == 1 and os.path.isabs(rotate[0].split()[0])
        done = subprocess.run(rotate[0], shell=True, env={"PATH": CRON_PATH},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not shutil.which("logrotate") and not shutil.which(LOGROTATE),
                    reason="logrotate (Debian package) is not installed")
def test_logrotate_twice_under_load_loses_nothing(tmp_path):
    rotated = threading.Event()
    sent = [0]

    def blocks():
        """Records until both rotations ran (at least 20,000; at most 2,000,000)."""
        while sent[0] < 2_000_000 and (sent[0] < 20_000 or not rotated.is_set()):
            yield "".join(acc_line(i) + "\n" for i in range(sent[0], sent[0] + 500)).encode()
            sent[0] += 500

    with Server(tmp_path, children=2, flush=0) as server:
        conf = tmp_path / "logrotate.conf"
        conf.write_text(policy_for(server))
        result = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", send_bytes(
            str(server.ingest), blocks(), timeout=60)))
        sender.start()
        try:
            for _ in range(2):
                # Wait for live files with records in them (they appear on first write).
                wait_until(lambda: any(p.stat().st_size for p in server.acc.glob("*.log")),
                           30, what="records in a live acc file")
                proc = subprocess.run([LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"),
                                       str(conf)], env={"PATH": CRON_PATH}, capture_output=True,
                                      text=True, timeout=60)
                assert proc.returncode == 0, proc.stderr
        finally:
            rotated.set()
            sender.join(60)
        assert result["r"].ok and result["r"].written == sent[0]
    lines = []
    for path in sorted(server.acc.iterdir()):
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        lines.extend(data.splitlines(keepends=True))
    assert any(p.name.endswith(".2.gz") for p in server.acc.iterdir())   # two rotations
    check_exactly_once(lines, sent[0])
