"""Shared test helpers: where things are, how to run the CLI, bounded waiting."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def kamflat_argv(*args):
    """argv that runs this checkout's `kamflat` (works without installing it)."""
    return [sys.executable, "-m", "kamflat", *map(str, args)]


def kamflat_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_kamflat(*args, timeout=30, **kwargs):
    """Run `kamflat ARGS...` to completion and return the CompletedProcess (text mode)."""
    return subprocess.run(kamflat_argv(*args), env=kamflat_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def wait_until(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_udp_port():
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    import socket
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port
