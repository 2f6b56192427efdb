"""The `kamflat` command: every sub-command is wired and describes itself."""
import pytest

from conftest import run_kamflat
from kamflat.cli import COMMANDS


def test_help_lists_every_command():
    proc = run_kamflat("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert "\n  %s " % name in proc.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name):
    proc = run_kamflat(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: kamflat %s" % name in proc.stdout


def test_unknown_command_says_so():
    proc = run_kamflat("rotate")
    assert proc.returncode == 2
    assert "kamflat: unknown command 'rotate'" in proc.stderr
