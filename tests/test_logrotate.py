"""The shipped logrotate policy, run by the real logrotate against a loaded server."""
import gzip
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import REPO, kamflat_env, wait_until
from serverutil import Server
from test_serve import acc_line, check_exactly_once
from kamflat.client import send_bytes

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def policy_for(server):
    """conf/logrotate.d/kamflat with the sample paths pointed at this server."""
    text = (REPO / "conf" / "logrotate.d" / "kamflat").read_text()
    text = text.replace("/tmp/kamflat/acc", str(server.acc))
    text = text.replace("/tmp/kamflat/kamailio_fifo", str(server.fifo))
    return text.replace("kamflat fifo", "%s -m kamflat fifo" % sys.executable)


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
                                       str(conf)], env=kamflat_env(), capture_output=True,
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
