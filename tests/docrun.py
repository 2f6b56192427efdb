"""Run one Markdown page's examples against a real server; the IO half of tests/test_docs.py.

    python tests/docrun.py PAGE.md RESULTS.json

It expects to run inside a private mount and network namespace (test_docs.py starts it
under `unshare`), so that the sample config's /tmp/kamflat and udp 127.0.0.1:5060 are its
own. There it mounts a tmpfs on /tmp/kamflat, brings up lo, starts
`kamflat serve -f conf/kamflat.cfg` from a temporary directory holding a copy of conf/,
runs every runnable block in order from that directory, stops the server, and writes one
result per block: {"line", "kind", "ok", "detail"}.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import docblocks  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = "/tmp/kamflat"
READY = [SAMPLE_DIR + "/kamailio_fifo", SAMPLE_DIR + "/ingest.sock"]
COMMAND_TIMEOUT = 60


def run_shell(script, cwd, shell="bash"):
    argv = [shell, "-c", script] if shell == "bash" else [sys.executable, "-c", script]
    try:
        done = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return None, (exc.output or b"").decode("utf-8", "replace")
    return done.returncode, done.stdout.decode("utf-8", "replace")


def run_block(block, cwd):
    if block.kind == "sh":
        status, output = run_shell("set -e\n" + block.text, cwd)
        return status == 0, "exit %s:\n%s" % (status, output)
    if block.kind == "python":
        status, output = run_shell(block.text, cwd, shell="python")
        return status == 0, "exit %s:\n%s" % (status, output)
    for command in docblocks.commands(block):
        status, output = run_shell(command.command, cwd)
        lines = output.rstrip("\n").split("\n") if output else []
        ok = (docblocks.output_matches(command.expected, lines) if command.expected
              else status == 0)
        if not ok:
            return False, "line %d: $ %s\nexit %s\nexpected:\n%s\ngot:\n%s" % (
                command.line, command.command, status, "\n".join(command.expected), output)
    return True, ""


def start_server(cwd):
    log = open(os.path.join(cwd, "serve.log"), "wb")
    server = subprocess.Popen(["kamflat", "serve", "-f", "conf/kamflat.cfg"], cwd=cwd,
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not all(os.path.exists(path) for path in READY):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            raise RuntimeError("the sample server did not start:\n"
                               + open(os.path.join(cwd, "serve.log")).read())
        time.sleep(0.05)
    return server


def stop_server(server):
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main(page, results_path):
    # The examples' `kamflat` is the one installed beside this Python (tox's, a venv's).
    # The Debian peers (kamctl, kamcmd, logrotate) are in the sbin directories.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"],
                                          "/usr/local/sbin", "/usr/sbin", "/sbin"])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.makedirs(SAMPLE_DIR, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", SAMPLE_DIR], check=True)
    cwd = tempfile.mkdtemp(prefix="kamflat-docs-")
    shutil.copytree(os.path.join(REPO, "conf"), os.path.join(cwd, "conf"))
    os.environ["HOME"] = cwd        # examples may write ~/.kamctlrc: the test's own
    with open(page, encoding="utf-8") as f:
        todo = [b for b in docblocks.blocks(f.read()) if not b.not_run]
    results = []
    server = start_server(cwd) if todo else None
    try:
        for block in todo:
            ok, detail = run_block(block, cwd)
            results.append({"line": block.line, "kind": block.kind, "ok": ok, "detail": detail})
    finally:
        if server is not None:
            stop_server(server)
        with open(results_path, "w") as f:
            json.dump(results, f)
        shutil.rmtree(cwd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
