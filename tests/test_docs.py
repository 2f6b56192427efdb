"""Docs that cannot lie: every runnable example of README.md and docs/*.md runs here.

The examples are read from the Markdown itself (tests/docblocks.py), so editing a page
edits its test. Each page runs in its own private mount and network namespace with its
own sample server (tests/docrun.py); a block the page marks `*Not run by the tests: ...*`
is reported as skipped with that reason.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

import docblocks

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
PAGE_TIMEOUT = 240
# Programs the examples call that come from Debian packages (`./dev test` installs them as
# root): a page that calls one that is missing is skipped, naming it.
PEERS = {"kamctl": "kamailio", "kamcmd": "kamailio", "sipsak": "sipsak",
         "logrotate": "logrotate", "sipp": "sip-tester"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def missing_peers(runnable):
    called = set()
    for block in runnable:
        called.update(re.findall(r"\b(%s)\b" % "|".join(PEERS), block.text))
    return sorted("%s (Debian package %s)" % (name, PEERS[name]) for name in called
                  if shutil.which(name, path=SEARCH_PATH) is None)


def namespace_prefix():
    """How to enter a private mount+network namespace here: as root directly, else as a
    user namespace's root (where the kernel allows it); None if neither works."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    base = ["unshare", "--mount", "--net", "--propagation", "private"]
    for prefix in (base, ["unshare", "--user", "--map-root-user"] + base[1:]):
        if subprocess.run(prefix + ["true"], capture_output=True).returncode == 0:
            return prefix
    return None


PREFIX = namespace_prefix()


def test_the_conventions_read_console_sh_python_and_skip_markers():
    page = ("text\n\n```console\n$ echo a \\\n  b\na b\n$ true\n```\n\n"
            "*Not run by the tests: needs systemd.*\n\n```sh\nsystemctl start x\n```\n"
            "```cfg\nnot run\n```\n  ```python\n  assert 1\n  ```\n")
    found = docblocks.blocks(page)
    assert [(b.kind, b.line, bool(b.not_run)) for b in found] == [
        ("console", 3, False), ("sh", 12, True), ("python", 18, False)]
    assert found[2].text == "assert 1\n"
    assert docblocks.commands(found[0]) == [
        docblocks.Command(4, "echo a \\\n  b", ["a b"]), docblocks.Command(7, "true", [])]
    assert docblocks.output_matches(["x ... z", "...", "end"], ["x yy z", "1", "2", "end"])
    assert docblocks.output_matches(["...", "end"], ["end"])
    assert not docblocks.output_matches(["x ... z"], ["x y"])
    assert not docblocks.output_matches(["a"], ["a", "b"])


def test_every_page_is_reachable_from_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if "docs/%s" % p.name not in readme]
    assert missing == []


def anchors(text):
    """The #anchors of a page's headings, as GitHub makes them."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, re.M)}


def test_every_link_between_pages_leads_somewhere():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md|)(?:#([\w-]+))?\)", text):
            path = (page.parent / target) if target else page
            if not path.is_file():
                broken.append("%s: %s" % (page.name, target))
            elif anchor and anchor not in anchors(path.read_text()):
                broken.append("%s: %s#%s" % (page.name, target or page.name, anchor))
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_examples_of_a_page_run_as_written(page, tmp_path):
    found = docblocks.blocks(page.read_text())
    not_run = [b for b in found if b.not_run]
    if len(not_run) == len(found):
        pytest.skip("no runnable example on %s (%d marked not run)" % (page.name, len(not_run)))
    missing = missing_peers([b for b in found if not b.not_run])
    if missing:
        pytest.skip("the examples of %s call %s, not installed" % (page.name, ", ".join(missing)))
    if PREFIX is None:
        pytest.skip("needs a private mount and network namespace (unshare as root, or user "
                    "namespaces) so the sample's /tmp/kamflat and port 5060 are the test's own")
    results_path = tmp_path / "results.json"
    runner = subprocess.Popen(PREFIX + ["--", sys.executable, str(REPO / "tests" / "docrun.py"),
                                        str(page), str(results_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True, env=dict(os.environ))
    try:
        output, _ = runner.communicate(timeout=PAGE_TIMEOUT)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert runner.returncode == 0, output.decode("utf-8", "replace")
    results = json.loads(results_path.read_text())
    assert len(results) == len(found) - len(not_run)
    failed = ["%s:%d (%s)\n%s" % (page.name, r["line"], r["kind"], r["detail"])
              for r in results if not r["ok"]]
    assert failed == [], "\n\n".join(failed)
