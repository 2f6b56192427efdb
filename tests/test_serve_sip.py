"""`kamflat serve` as the acc backend of a SIP test bed: real UDP, real writer processes."""
import shutil
import socket
import subprocess

import pytest

from conftest import free_udp_port, wait_until
from serverutil import Server, statistic
from test_acc_sip import ACC_SIP, RELAYED, acc_file_records, normalized, sent_requests

REFERENCE = '''modparam("acc", "db_extra", "src_user=$fU;src_domain=$fd;dst_ouser=$tU")
modparam("kamflat", "sip_reply", "OTHER=404 Not here")
listen=udp:127.0.0.1:{port}
'''


def ask(sock, data, port):
    """Send a recorded request from `sock` and return the reply. The recordings' Via
    names the recorder's port 53473 and sl answers the Via: point it at this socket."""
    via = b"127.0.0.1:%d" % sock.getsockname()[1]
    sock.sendto(data.replace(b"127.0.0.1:53473", via), ("127.0.0.1", port))
    return sock.recv(65535)


def test_reference_traffic_gives_the_lines_kamailio_wrote(tmp_path):
    port = free_udp_port()
    with Server(tmp_path, children=4, extra=REFERENCE.format(port=port)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            for name, data, status in sent_requests():
                if name in RELAYED:
                    continue
                if data.startswith(b"ACK "):
                    client.sendto(data, ("127.0.0.1", port))
                    continue
                reply = ask(client, data, port)
                assert reply.split(b"\r\n", 1)[0].decode() == status, name
        sent = len([n for n, _, _ in sent_requests() if n not in RELAYED])
        # An ACK gets no reply: wait for its count rather than race the writer.
        wait_until(lambda: statistic(server.mi("get_statistics", "core:"),
                                     "core:rcv_requests", 0) == sent, 5,
                   what="every request counted")
        ps = server.mi("ps").decode()
        assert "Type=udp receiver child=0 sock=127.0.0.1:%d" % port in ps
    expected = [r for r in acc_file_records(ACC_SIP) if b"|call-fwd-13|" not in r]
    assert normalized(acc_file_records(server.acc)) == normalized(expected)
    # File numbers are the writers' ranks + 128, as Kamailio's UDP receivers.
    assert {p.name for p in server.acc.iterdir()} <= {"acc_%d.log" % n for n in range(129, 133)}


def test_garbage_is_dropped_and_counted_and_the_next_request_answered(tmp_path):
    port = free_udp_port()
    invite = dict((n, d) for n, d, _ in sent_requests())["sl_invite_basic"]
    with Server(tmp_path, children=2, extra=REFERENCE.format(port=port)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            for junk in (b"", b"\x00\xff" * 100, b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
                client.sendto(junk, ("127.0.0.1", port))
            assert ask(client, invite, port).startswith(b"SIP/2.0 200 OK\r\n")
        wait_until(lambda: statistic(server.mi("get_statistics", "core:"),
                                     "core:drop_requests", 0) >= 2, 5, what="drops counted")
        assert server.proc.poll() is None
    assert len(acc_file_records(server.acc)) == 1


@pytest.mark.skipif(not shutil.which("sipsak"), reason="sipsak (Debian package) is not installed")
def test_sipsak_invite_is_answered_after_its_record_is_written(tmp_path):
    port = free_udp_port()
    with Server(tmp_path, children=2, extra=REFERENCE.format(port=port)) as server:
        message = tmp_path / "invite.txt"
        message.write_bytes(
            b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-sipsak-1\r\n"
            b"From: <sip:alice@example.com>;tag=ft-sipsak\r\n"
            b"To: <sip:bob@example.org>\r\nCall-ID: sipsak-call-1@127.0.0.1\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        proc = subprocess.run(["sipsak", "-f", str(message), "-s",
                               "sip:bob@127.0.0.1:%d" % port], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # flush=1 and the record is written before the reply: it is there now.
        records = acc_file_records(server.acc)
        assert [r.split(b"|")[:6] for r in records] == [
            [b"INVITE", b"ft-sipsak", b"", b"sipsak-call-1@127.0.0.1", b"200", b"OK"]]
        assert records[0].endswith(b"|alice|example.com|bob")
