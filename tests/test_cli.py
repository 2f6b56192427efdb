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


@pytest.mark.parametrize("name", ["fifo", "rpc", "send", "gen"])
def test_every_client_help_states_the_one_exit_status_scheme(name):
    from kamflat.tools import EXIT_STATUS_HELP
    proc = run_kamflat(name, "--help")
    assert " ".join(EXIT_STATUS_HELP.split()) in " ".join(proc.stdout.split())


@pytest.mark.parametrize("name,usage,required", [
    ("fifo", "CMD [ARG ...]", "CMD"), ("rpc", "method [PARAM ...]", "method")])
def test_a_missing_command_is_a_usage_error_naming_only_what_is_required(name, usage, required):
    proc = run_kamflat(name)
    assert proc.returncode == 2
    assert ("] %s\n" % usage) in proc.stderr.replace("\n" + " " * 20, " ")
    assert proc.stderr.splitlines()[-1].endswith("the following arguments are required: %s"
                                                  % required)


@pytest.mark.parametrize("name", ["send", "gen"])
def test_no_server_on_the_ingest_socket_is_exit_3_with_one_line(name, tmp_path):
    proc = run_kamflat(name, "--socket", str(tmp_path / "none.sock"),
                       *(["--count", "3"] if name == "gen" else [str(tmp_path / "in.jsonl")]))
    if name == "send":
        (tmp_path / "in.jsonl").write_text('{"table": "acc", "values": [1]}\n')
        proc = run_kamflat(name, "--socket", str(tmp_path / "none.sock"), str(tmp_path / "in.jsonl"))
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [
        "kamflat %s: cannot connect to the ingest socket %s: No such file or directory"
        % (name, tmp_path / "none.sock")]


def test_version_as_kamailio_v_prints_it():
    import platform
    import shutil
    import kamflat
    outputs = {flag: run_kamflat(flag) for flag in ("-v", "-V", "--version")}
    assert {(r.returncode, r.stderr) for r in outputs.values()} == {(0, "")}
    text = outputs["-v"].stdout
    assert {r.stdout for r in outputs.values()} == {text}
    lines = text.splitlines()
    assert lines[0] == "version: kamflat %s (%s/linux) " % (kamflat.__version__,
                                                            platform.machine())
    assert [line.split(":")[0] for line in lines] == ["version", "flags", "python", "emulates"]
    real = shutil.which("kamailio")
    if real:     # the same layout: "version: NAME VERSION (ARCH/OS) " then "flags: ..."
        import subprocess
        first = subprocess.run([real, "-v"], capture_output=True, text=True).stdout.splitlines()
        assert first[0].startswith("version: kamailio ") and first[0].endswith("/linux) ")
        assert first[1].startswith("flags: ")
