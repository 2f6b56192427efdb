"""UDP sockets for the SIP front end: open what `listen=` names, and a receive loop.

`open_listen_sockets(["udp:127.0.0.1:5060", "udp:[::1]:5060"])` -> [socket]. The
sockets are opened once, before the writers fork, and every writer receives from all
of them, as Kamailio's UDP receiver processes share one socket each.

`serve_udp(socks, handler, write, stop)` is one writer's loop: receive a datagram,
let the AccHandler decide, send the reply, hand the records to `write(table, values)`.
The record is written before the reply is sent, so a client that got its reply can rely
on the record being there (Kamailio's acc_db_request also runs before sl_send_reply).
"""
import errno
import selectors
import socket

from kamflat.config import model
from kamflat.config.model import ListenError

MAX_DATAGRAM = 65535


def parse_listen(spec):
    """listen= value -> (family, host, port); the rule is config.model.parse_listen's."""
    entry = model.parse_listen(spec)
    return (socket.AF_INET6 if entry.ipv6 else socket.AF_INET), entry.host, entry.port


def open_listen_sockets(listen_list):
    """Bind one non-blocking UDP socket per listen= value; raise ListenError naming the
    value on any failure (and close the ones already opened)."""
    socks = []
    try:
        for spec in listen_list:
            family, host, port = parse_listen(spec)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.setblocking(False)
            except OSError as e:
                sock.close()
                raise ListenError("listen=%s: cannot bind %s port %d: %s"
                                  % (spec, host, port, e.strerror or e)) from None
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def serve_udp(socks, handler, write, stop, on_reason=None, poll_interval=0.05):
    """Serve until the threading.Event-like `stop` is set (checked every poll_interval).

    write(table, values) stores one record; on_reason(text, source) is told why a
    datagram was dropped or not accounted (for the log)."""
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(poll_interval):
                _drain(key.fileobj, handler, write, on_reason)


def _drain(sock, handler, write, on_reason, budget=64):
    """Handle the datagrams waiting on one socket (a bounded batch, so other sockets and
    the stop flag are seen soon)."""
    for _ in range(budget):
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:            # e.g. ICMP port unreachable from a past reply
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                continue
            raise
        outcome = handler.handle(data, source)
        for table, values in outcome.records:
            write(table, values)
        if outcome.reason and on_reason:
            on_reason(outcome.reason, source)
        if outcome.reply is not None:
            try:
                sock.sendto(outcome.reply, outcome.reply_to)
            except OSError as e:
                if on_reason:
                    on_reason("reply to %s not sent: %s" % (outcome.reply_to, e), source)
