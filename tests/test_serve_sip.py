"""`kamflat serve` as the acc backend of a SIP test bed: real UDP, real writer processes."""
import os
import shutil
import socket
import subprocess
import threading

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


def invite(n, reply_port):
    return (b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-burst-%d\r\n"
            b"From: <sip:alice@example.com>;tag=ft-%d\r\n"
            b"To: <sip:bob@example.org>\r\nCall-ID: burst-%d@127.0.0.1\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n" % (reply_port, n, n, n))


def call_ids(directory):
    """The Call-IDs of the whole records in the files (another writer may be in the middle
    of its write() when they are read: its last line is not whole yet)."""
    ids = []
    for path in sorted(directory.glob("acc_*.log")):
        data = path.read_bytes()
        ids += [r.split(b"|")[3] for r in data[:data.rfind(b"\n") + 1].split(b"\n") if r]
    return ids


def bursts(port, count, size=40, check=None):
    """`count` INVITEs in bursts of `size` sent at once from one socket (a writer takes a
    burst's datagrams in one wake-up; a burst fits the server's socket buffer, which
    would drop datagrams as UDP does); every reply, after check(reply) when given."""
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        for first in range(0, count, size):
            numbers = range(first, min(count, first + size))
            for n in numbers:
                sock.sendto(invite(n, sock.getsockname()[1]), ("127.0.0.1", port))
            for _ in numbers:
                replies.append(sock.recv(65535))
                if check:
                    check(replies[-1])
    return replies


def test_a_burst_is_answered_each_reply_after_its_record_is_written(tmp_path):
    port = free_udp_port()
    with Server(tmp_path, children=2, extra=REFERENCE.format(port=port)) as server:
        def written_first(reply):
            assert reply.startswith(b"SIP/2.0 200 OK\r\n")
            call_id = reply.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0]
            assert call_id in call_ids(server.acc)     # written before it was answered
        bursts(port, 300, check=written_first)
        assert sorted(call_ids(server.acc)) == sorted(b"burst-%d@127.0.0.1" % n
                                                      for n in range(300))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_sip_records_wait_while_the_disk_is_full_and_each_is_written_once(tmp_path):
    """The disk fills up under bursts of requests: what could not be written is kept
    and retried, the writers take no more datagrams meanwhile (the clients wait), and
    once there is room again every request is answered and every record is in the files
    exactly once, none torn."""
    port = free_udp_port()
    acc = tmp_path / "acc"
    acc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(acc)], check=True)
    try:
        with Server(tmp_path, children=2, extra=REFERENCE.format(port=port)) as server:
            filler = acc / "filler"
            filler.write_bytes(b"x" * ((1 << 20) - 40_000))     # room for ~150 records
            replies = []
            asking = threading.Thread(target=lambda: replies.extend(bursts(port, 600)))
            asking.start()
            try:
                wait_until(lambda: statistic(server.mi("get_statistics", "flatstore:"),
                                             "flatstore:acc_failed", 0) > 0,
                           10, what="writes to fail")
                waiting = len(replies)
            finally:
                filler.unlink()
                asking.join(30)
            assert waiting < 600           # the writers took no more meanwhile
            assert len(replies) == 600
            assert all(r.startswith(b"SIP/2.0 200 OK\r\n") for r in replies)
            wanted = sorted(b"burst-%d@127.0.0.1" % n for n in range(600))
            wait_until(lambda: len(call_ids(acc)) >= 600, 20, what="the records written")
            records = acc_file_records(acc)
            assert sorted(call_ids(acc)) == wanted                 # each once
            assert all(r.count(b"|") == records[0].count(b"|") for r in records)  # none torn
    finally:
        subprocess.run(["umount", str(acc)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_sip_records_the_disk_has_no_room_for_at_stop_are_counted(tmp_path):
    """Requests are answered while their records cannot all be written; at the stop the
    server says exactly how many SIP records it could not write (those answered and not
    in the file), and exits 1."""
    port = free_udp_port()
    acc = tmp_path / "acc"
    acc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(acc)], check=True)
    try:
        server = Server(tmp_path, children=1, extra=REFERENCE.format(port=port)
                        + 'modparam("kamflat", "stop_grace", 500)\n').start()
        replies = 0
        try:
            (acc / "filler").write_bytes(b"x" * ((1 << 20) - 4096))    # one page left
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(0.5)
                for first in range(0, 300, 30):    # until the writer takes no more
                    for n in range(first, first + 30):
                        sock.sendto(invite(n, sock.getsockname()[1]), ("127.0.0.1", port))
                    try:
                        for _ in range(30):
                            sock.recv(65535)
                            replies += 1
                    except socket.timeout:
                        break
            failed = statistic(server.mi("get_statistics", "flatstore:"),
                               "flatstore:acc_failed", 0)
        finally:
            status = server.stop()
        on_disk = len(call_ids(acc))
    finally:
        subprocess.run(["umount", str(acc)], check=True)
    assert failed > 0 and status == 1
    assert replies > on_disk
    assert "; %d SIP records)" % (replies - on_disk) in server.log()
