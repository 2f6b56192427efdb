"""Kamailio's core values from the start: debug= read and changed in every process, and
every statistic there from the start. Real servers, real MI FIFO and JSON-RPC FIFO."""
import json
import socket
import subprocess

import pytest

from conftest import DATA, free_udp_port, kamflat_argv, kamflat_env, run_kamflat, wait_until
from serverutil import Server, statistic
from kamflat.server.paths import live_holder

CONFORMANCE = DATA / "mi_classic_cases.json"     # Kamailio 3.3, recorded


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

        invite = (b"INVITE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1"
                  b"\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c1\r\n"
                  b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        udp.sendto(invite, ("127.0.0.1", port))
        wait_until(lambda: "core:rcv_requests_invite = 1" in rpc(
            server, "stats.get_statistics", "rcv_requests_invite")["result"], 10,
            what="the INVITE counted per method")
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
        wait_until(lambda: "INFO: kamflat ready" in server.log(), 10, what="the INFO line")


def recorded_reply(request_text):
    """Kamailio 3.3's recorded MI reply to `request_text` (shared/conformance)."""
    cases = json.loads(CONFORMANCE.read_text())["exchanges"]
    return next(c["reply_text"] for c in cases if c["request_text"] == request_text)


def names(reply):
    return [line.split(" = ")[0] for line in reply.splitlines()[1:] if " = " in line]


def test_every_statistic_is_there_from_the_start_at_0(tmp_path):
    extra = 'loadmodule "sl.so"\nrundir="%s"\nloadmodule "jsonrpcs.so"\n' % tmp_path
    with Server(tmp_path, extra=extra) as server:
        wait_until((tmp_path / "kamailio_rpc.fifo").exists, 10, what="the JSON-RPC FIFO")
        # 3.3's core: group, recorded, is what kamflat lists (plus its two restart counters)
        core = server.mi("get_statistics", "core:").decode()
        recorded = recorded_reply(":get_statistics:k33_r\ncore:\n\n")
        assert [n for n in names(core) if n not in ("core:process_restarts",
                                                    "core:writer_restarts")] == names(recorded)
        assert core == "200 OK\n%s\n\n" % "\n".join("%s = 0" % n for n in names(core))
        assert server.mi("get_statistics", "drop_requests") == \
            b"200 OK\ncore:drop_requests = 0\n\n"
        shmem = names(server.mi("get_statistics", "shmem:").decode())
        assert shmem == names(recorded_reply(":get_statistics:k33_r\nshmem:\n\n"))
        every = names(server.mi("get_statistics", "all").decode())
        groups = list(dict.fromkeys(n.split(":")[0] for n in every))
        assert groups == ["core", "dns", "flatstore", "ingest", "mi_fifo", "shmem", "sl"]
        assert {"sl:200_replies", "sl:received_ACKs", "flatstore:acc_written",
                "flatstore:missed_calls_failed", "ingest:lines"} <= set(every)
        assert rpc(server, "stats.get_statistics", "drop_requests")["result"] == [
            "core:drop_requests = 0"]
        # over RPC, as 5.6: the per-method request counters and dns:slow_dns_request too
        rpc_names = [line.split(" = ")[0]
                     for line in rpc(server, "stats.get_statistics", "all")["result"]]
        assert set(rpc_names) - set(every) == {"dns:slow_dns_request"} | {
            "core:rcv_requests_" + m for m in ("ack", "bye", "cancel", "info", "invite",
                                               "message", "notify", "options", "prack",
                                               "publish", "refer", "register", "subscribe",
                                               "update")}
        assert server.mi("reset_statistics", "drop_requests") == b"200 OK\n\n"
        assert server.mi("clear_statistics", "bad_URIs_rcvd") == \
            b"200 OK\ncore:bad_URIs_rcvd = 0\n\n"


@pytest.mark.parametrize("args, answer", [(["-d", "-d"], b"DEBUG:: 3"),
                                          (["--log-level", "ERROR"], b"DEBUG:: -1")])
def test_serve_d_adds_a_level_and_log_level_wins(tmp_path, args, answer):
    server = Server(tmp_path, extra="debug=1")
    proc = subprocess.Popen(kamflat_argv("serve", "-f", server.config, *args), env=kamflat_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: live_holder(str(server.fifo)), 15, what="the MI FIFO")
        assert server.mi("debug") == b"200 OK\n" + answer + b"\n\n"
    finally:
        proc.terminate()
        proc.wait(30)
