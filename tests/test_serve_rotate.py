"""Rotation of a running `kamflat serve` by every client generation: kamctl 3.x style MI
(`kamflat fifo`), today's `kamctl rpc`, `kamcmd`, and `kamflat rpc`."""
import os
import shutil
import subprocess

import pytest

from conftest import kamflat_argv, kamflat_env
from serverutil import Server
from test_serve import acc_line, check_exactly_once
from kamflat.client import send

RPC = '''loadmodule "jsonrpcs.so"
loadmodule "ctl.so"
modparam("jsonrpcs", "fifo_name", "{tmp}/kamailio_rpc.fifo")
modparam("jsonrpcs", "transport", 2)
modparam("ctl", "binrpc", "unixs:{tmp}/kamailio_ctl")
'''


def kamctl(server):
    home = server.tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".kamctlrc").write_text('RPCFIFOPATH="%s/kamailio_rpc.fifo"\n' % server.tmp)
    env = dict(os.environ, HOME=str(home))
    env.pop("KAMCTL_TEST", None)
    return subprocess.run(["kamctl", "rpc", "flatstore.k_rotate"], env=env, cwd=home,
                          capture_output=True, text=True, timeout=30)


def kamcmd(server):
    return subprocess.run(["kamcmd", "-s", "unixs:%s/kamailio_ctl" % server.tmp,
                           "flatstore.rotate"], capture_output=True, text=True, timeout=30)


def kamflat(*args):
    def run(server):
        return subprocess.run(kamflat_argv(*[a.format(cfg=server.config) for a in args]),
                              env=kamflat_env(), capture_output=True, text=True, timeout=30)
    return run


CLIENTS = {
    "kamctl rpc flatstore.k_rotate": kamctl,
    "kamcmd flatstore.rotate": kamcmd,
    "kamflat rpc flatstore.k_rotate": kamflat("rpc", "-f", "{cfg}", "flatstore.k_rotate"),
    "kamflat fifo flat_rotate": kamflat("fifo", "-f", "{cfg}", "flat_rotate"),
}


@pytest.mark.parametrize("client", CLIENTS)
def test_rotation_moves_the_next_records_into_new_files(tmp_path, client):
    tool = client.split()[0]
    if tool in ("kamctl", "kamcmd") and not shutil.which(tool):
        pytest.skip("%s (Debian package kamailio) is not installed" % tool)
    with Server(tmp_path, children=2, extra=RPC.format(tmp=tmp_path)) as server:
        assert send(str(server.ingest), [acc_line(i, "before") for i in range(2000)]).ok
        old = []
        for live in server.acc.glob("acc_*.log"):
            live.rename(str(live) + ".old")
            old.append(live.name + ".old")
        proc = CLIENTS[client](server)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [p for p in server.open_files() if p.endswith(".old")]
        assert send(str(server.ingest), [acc_line(i, "after") for i in range(2000)]).ok
    check_exactly_once(server.lines(pattern="{table}_*.log.old"), 2000, "before")
    check_exactly_once(server.lines(pattern="{table}_*.log"), 2000, "after")
