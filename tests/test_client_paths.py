"""The clients' -f find what the server made, because both read the one resolved model.

A real `kamflat serve` with rundir= and relative names (the bug: the server made
RUNDIR/kamailio_rpc.fifo while `kamflat rpc -f` looked in /run/kamailio).
"""
import json

from conftest import DATA, run_kamflat, wait_until
from serverutil import Server

DEBIAN = DATA / "cfg" / "debian-kamailio.cfg"


def test_every_client_finds_the_servers_paths_under_rundir(tmp_path):
    rundir = tmp_path / "kfx"
    rundir.mkdir()
    extra = ('rundir="%s"\nloadmodule "jsonrpcs.so"\n'
             'modparam("mi_fifo", "fifo_name", "kf_fifo")\n' % rundir)
    with Server(tmp_path, extra=extra) as server:
        assert server.mi_fifo == str(rundir / "kf_fifo")
        # the MI FIFO is opened first; the JSON-RPC FIFO follows it
        wait_until((rundir / "kamailio_rpc.fifo").exists, 10, what="the JSON-RPC FIFO")
        rpc = run_kamflat("rpc", "-f", server.config, "core.version")
        assert rpc.returncode == 0, rpc.stderr
        assert json.loads(rpc.stdout)["result"].startswith("kamailio ")
        fifo = run_kamflat("fifo", "-f", server.config, "version")
        assert fifo.returncode == 0, fifo.stderr
        assert fifo.stdout.startswith("Server:: kamflat")
        record = {"table": "acc", "values": ["INVITE", "ft", "tt", "c-1", 200, "OK", 1795763336]}
        send = run_kamflat("send", "-f", server.config, input=json.dumps(record) + "\n")
        assert send.returncode == 0, send.stderr
    cat = run_kamflat("cat", "-f", server.config, "--json", "acc")
    assert cat.returncode == 0, cat.stderr
    assert [json.loads(line)["record"]["callid"] for line in cat.stdout.splitlines()] == ["c-1"]


def test_rpc_f_of_a_config_without_a_jsonrpcs_fifo_says_so(tmp_path):
    cfg = tmp_path / "k.cfg"
    cfg.write_text('loadmodule "jsonrpcs.so"\nmodparam("jsonrpcs", "transport", 1)\n')
    rpc = run_kamflat("rpc", "-f", cfg, "core.version")
    assert (rpc.returncode, rpc.stderr) == (
        2, "kamflat rpc: %s: loads no jsonrpcs with its FIFO transport\n" % cfg)


def test_clients_read_paths_of_a_config_written_for_a_real_kamailio(tmp_path):
    # no acc directory and a TCP listen: serve refuses it, the clients still find the paths
    from kamflat.tools import fifo, rpc, send
    cfg = tmp_path / "k.cfg"
    cfg.write_text('listen=tcp:127.0.0.1:5060\nrundir="/tmp/kr"\nloadmodule "mi_fifo.so"\n'
                   'loadmodule "jsonrpcs.so"\nmodparam("kamflat", "ingest_socket", "/tmp/i.s")\n')
    assert fifo.fifo_from_config(str(cfg)) == ("/tmp/kr/kamailio_fifo", "/tmp/")
    assert rpc.fifo_from_config(str(cfg)) == ("/tmp/kr/kamailio_rpc.fifo", "/tmp/")
    assert send.socket_path(type("Args", (), {"socket": None, "config": str(cfg)})) == "/tmp/i.s"
    assert rpc.fifo_from_config(str(DEBIAN)) == ("/var/run/kamailio/kamailio_rpc.fifo", "/tmp/")
