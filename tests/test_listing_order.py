"""Listings come in the order Kamailio's own data structures give (a real server):

- statistics: groups, then names, each sorted by strcmp (core/counters.c grp_hash_add,
  cnt_hash_add), over MI and RPC alike;
- shared variables: newest first (pv_shv.c add_shvar prepends; mi_shvar_get, pv.shvGet);
- processes: pt[] index order (kex mi_ps, core_cmd.c core.psx);
- RPC methods: sorted by name (rpc_lookup.c rpc_sarray, system_listMethods);
- MI commands (`which`): registration order, kex and pv at load, the others at mod_init.
"""
import json

from conftest import run_kamflat, wait_until
from serverutil import Server
from kamflat.mgmt.statistics import NOT_IN_33

SHV = ('loadmodule "pv.so"\nmodparam("pv", "shvset", "zeta=i:1")\n'
       'modparam("pv", "shvset", "alpha=s:a")\nmodparam("pv", "shvset", "mid=i:2")\n')


def rpc(server, *args, pairs=False):
    """The result; with pairs, objects as [(key, value)] (pv.shvGet repeats "shv")."""
    result = run_kamflat("rpc", "-f", server.config, *args)
    assert result.returncode == 0, result.stderr
    hook = list if pairs else None
    answer = json.loads(result.stdout, object_pairs_hook=hook)
    return dict(answer)["result"] if pairs else answer["result"]


def strcmp_key(text):
    return text.encode()


def test_every_listing_in_kamailios_order(tmp_path):
    extra = SHV + 'rundir="%s"\nloadmodule "jsonrpcs.so"\nloadmodule "sl.so"\n' % tmp_path
    with Server(tmp_path, extra=extra) as server:
        wait_until((tmp_path / "kamailio_rpc.fifo").exists, 10, what="the JSON-RPC FIFO")
        # shared variables: newest first, over both
        mi_shv = server.mi("shv_get").decode().splitlines()[1:-1]
        assert [line.split()[1] for line in mi_shv] == ["mid", "alpha", "zeta"]
        items = dict(rpc(server, "pv.shvGet", pairs=True))["items"]
        assert [dict(shv)["name"] for key, shv in items] == ["mid", "alpha", "zeta"]
        # statistics: (group, name) by strcmp; MI and RPC list the same
        mi_stats = [line.split(" = ")[0]
                    for line in server.mi("get_statistics", "all").decode().splitlines()[1:]
                    if line]
        pairs = [tuple(n.split(":", 1)) for n in mi_stats]
        assert pairs == sorted(pairs, key=lambda p: (strcmp_key(p[0]), strcmp_key(p[1])))
        assert mi_stats.index("core:bad_URIs_rcvd") < mi_stats.index("core:bad_msg_hdr")
        rpc_stats = [line.split(" = ")[0] for line in rpc(server, "stats.get_statistics", "all")]
        rpc_pairs = [tuple(n.split(":", 1)) for n in rpc_stats]
        assert rpc_pairs == sorted(rpc_pairs, key=lambda p: (strcmp_key(p[0]), strcmp_key(p[1])))
        assert [n for n in rpc_stats if tuple(n.split(":", 1)) not in NOT_IN_33] == mi_stats
        # processes: table order, the attendant (main) first
        ps = server.mi("ps").decode().splitlines()[1:-1]
        ids = [int(line.split("ID=")[1].split()[0]) for line in ps]
        assert ids == sorted(ids) and ids[0] == 0 and "Type=attendant" in ps[0]
        psx = rpc(server, "core.psx")
        assert [p["IDX"] for p in psx] == ids
        # RPC methods: sorted by name
        methods = rpc(server, "system.listMethods")
        assert methods == sorted(methods, key=strcmp_key) and "core.psx" in methods
        # MI commands: kex's, then pv's (both at load), then db_flatstore's (mod_init)
        which = server.mi("which").decode().splitlines()[1:-1]
        assert which == ["uptime", "version", "pwd", "arg", "which", "kill", "ps", "debug",
                         "get_statistics", "reset_statistics", "clear_statistics",
                         "shv_get", "shv_set", "flat_rotate"]
