"""UDP sockets for the SIP front end: open what `listen=` names, and a receive loop.

`open_listen_sockets(["udp:127.0.0.1:5060", "udp:[::1]:5060"])` -> [socket]. The
sockets are opened once, before the writers fork, and every writer receives from all
of them, as Kamailio's UDP receiver processes share one socket each.

Writers wait on them in `selector()` (each datagram wakes one writer, see
ExclusiveSelector); `drain()` takes a batch of datagrams from a socket: lets the
AccHandler decide, hands the batch's records to `write`, then sends the replies. The
records are written before the replies are sent, so a client that got its reply can
rely on its record being there (Kamailio's acc_db_request also runs before
sl_send_reply). `serve_udp(socks, handler, write, stop)` runs the same receive loop in
a thread (for tests and embedding).
"""
import errno
import select
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


class ExclusiveSelector(selectors.EpollSelector):
    """An epoll selector that registers everything with EPOLLEXCLUSIVE.

    Every writer holds the same UDP sockets (opened before the fork). Were they all
    plainly waiting on them, each datagram would wake every writer and all but one would
    find nothing (a thundering herd: CPU per request growing with `children`). With
    EPOLLEXCLUSIVE the kernel wakes one writer that is waiting, as Kamailio's blocking
    recvfrom() in each UDP receiver process does. (For a writer's own sockets and pipes
    the flag changes nothing: it is their only waiter.) modify() is not available:
    unregister and register again."""
    _EVENT_READ = select.EPOLLIN | getattr(select, "EPOLLEXCLUSIVE", 0)


def selector():
    """The selector a process receiving from the shared UDP sockets waits in: an
    ExclusiveSelector where the kernel has EPOLLEXCLUSIVE (Linux >= 4.5), else the
    default one."""
    if getattr(select, "EPOLLEXCLUSIVE", 0):
        probe = select.epoll()
        r, w = socket.socketpair()
        try:
            probe.register(r.fileno(), ExclusiveSelector._EVENT_READ)
            return ExclusiveSelector()
        except OSError:
            pass
        finally:
            probe.close()
            r.close()
            w.close()
    return selectors.DefaultSelector()


def serve_udp(socks, handler, write, stop, on_reason=None, poll_interval=0.05):
    """Serve until the threading.Event-like `stop` is set (checked every poll_interval),
    with the selector and drain() a writer process uses.

    write(table, values) stores one record; on_reason(text, source) is told why a
    datagram was dropped or not accounted (for the log)."""
    def write_all(records):
        for table, values in records:
            write(table, values)

    with selector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(poll_interval):
                drain(key.fileobj, handler, write_all, on_reason)


def drain(sock, handler, write, on_reason=None, on_send_error=None, budget=64):
    """Handle the datagrams waiting on one socket, at most `budget` (so other sockets
    and the caller's other work are seen soon). Each goes to handler.handle(); then the
    records of all of them go to write(records) at once, and only then are their
    replies sent, in order: a client that got its reply finds its record written
    (flush=1), and a wake-up's records take one write() and its replies one burst,
    where one request at a time cost a write() and a wake-up of the client each.
    write() keeps what it could not write, to retry (the caller takes nothing more
    until then). on_reason(text, source) is told why a datagram was dropped or not
    accounted; on_send_error(exc, reply_to) when a reply could not be sent. Returns
    how many datagrams were taken."""
    taken = 0
    records, replies = [], []
    try:
        while taken < budget:
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:            # e.g. ICMP port unreachable from a past reply
                if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            taken += 1
            outcome = handler.handle(data, source)
            if outcome.records:
                records.extend(outcome.records)
            if outcome.reason and on_reason:
                on_reason(outcome.reason, source)
            if outcome.reply is not None:
                replies.append((outcome.reply, outcome.reply_to, source))
    finally:
        # whatever happened, what was taken is written, then answered (as Kamailio's
        # acc_db_request runs before sl_send_reply)
        if records:
            write(records)
        for reply, reply_to, source in replies:
            try:
                sock.sendto(reply, reply_to)
            except OSError as e:
                if on_send_error:
                    on_send_error(e, reply_to)
                elif on_reason:
                    on_reason("reply to %s not sent: %s" % (reply_to, e), source)
    return taken
