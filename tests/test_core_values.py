"""Kamailio's core values from the start: debug= read and changed in every process, and
every statistic there from the start. Real servers, real MI FIFO and JSON-RPC FIFO."""
import json
import socket

from conftest import free_udp_port, run_kamflat, wait_until
from serverutil import Server, statistic


def rpc(server, *args):
    result = run_kamflat("rpc", "-f", server.config, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_debug_from_the_config_read_and_changed_in_every_process(tmp_path):
    port = free_udp_port()
    extra = ('debug=3\nlisten=udp:127.0.0.1:%d\nrundir="%s"\nloadmodule "jsonrpcs.so"\n'
             % (port, tmp_path))
    with Server(tmp_path, children=1, extra=extra) as server:
        wait_until((tmp_path / "kamailio_rpc.fifo").exists, 10, what="the JSON-RPC FIFO")
        assert server.mi("debug") == b"200 OK\nDEBUG:: 3\n\n"
        assert rpc(server, "cfg.get", "core", "debug")["result"] == 3
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def garbage(tag):
            """A datagram the writer process drops, logging it at INFO (debug 2 and up)."""
            udp.sendto(b"not sip %s\r\n\r\n" % tag, ("127.0.0.1", port))

        def malformed():
            return statistic(server.mi("get_statistics", "kamflat:"), "kamflat:sip_malformed", 0)

        garbage(b"one")
        wait_until(lambda: "SIP from" in server.log(), 10, what="the writer's INFO line")
        seen = server.log().count("SIP from")
        rpc(server, "cfg.set_now_int", "core", "debug", "1")       # L_NOTICE: no INFO
        assert server.mi("debug") == b"200 OK\nDEBUG:: 1\n\n"
        garbage(b"two")
        wait_until(lambda: malformed() == 2, 10, what="the writer to take the second datagram")
        server.mi("debug", "2")                                     # L_INFO again
        garbage(b"three")
        wait_until(lambda: server.log().count("SIP from") == seen + 1, 10,
                   what="the third datagram's line")
        assert rpc(server, "cfg.get", "core", "debug")["result"] == 2
        udp.close()
    assert server.log().count("SIP from") == seen + 1        # "two" was not logged


def test_without_debug_kamflat_logs_at_info_and_answers_kamailios_default(tmp_path):
    with Server(tmp_path) as server:
        assert server.mi("debug") == b"200 OK\nDEBUG:: 0\n\n"
        assert "kamflat ready" in server.log()
