"""The ctl module's binrpc socket (what `kamcmd` talks to): IO around binrpc.py.

`CtlServer("unixs:/run/kamailio/kamailio_ctl", management=m)` listens on a unix
stream socket (`unix:` and `unixs:` are the same, a bare path too), a unix datagram
socket (`unixd:`), or `tcp:HOST:PORT` / `udp:HOST:PORT` (port 0 picks a free one;
`.address` tells which). One non-blocking loop serves every client; a client that
sends half a packet or stops reading its reply only holds its own connection. A
slow method (a rotation) runs on a helper thread; only its own connection waits
for it (replies on a connection keep the order of its requests).

Running out of descriptors never stops the management process, nor starves the
FIFOs served beside it (they need a descriptor for every reply):
- At most `max_connections` stream connections are open (kamflat param
  ctl_max_connections, 256), and never more than the fd limit less FD_RESERVE (64).
  At the cap, the connection idle the longest (for at least EVICT_IDLE s) is closed
  to make room for a new one, as nginx does with idle keep-alive connections; with
  none that idle, new ones wait in the listen backlog.
- A connection with no byte in or out for `idle_timeout` s is closed (kamflat param
  ctl_idle_timeout, 60000 ms), unless its slow method is still running.
- accept() failing for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
  ENOMEM) stops accepting, logged once; accepting resumes when one of its own
  connections closes, or after ACCEPT_RETRY s for descriptors freed elsewhere.
"""
import collections
import errno
import logging
import os
import resource
import selectors
import socket
import stat
import time

from kamflat.config.model import parse_ctl_address as parse_address
from kamflat.proto import binrpc
from kamflat.server.fifoio import LogLimiter, SlowCalls, owner_ids, remove_if, serve_until
from kamflat.mgmt.manage import SLOW
from kamflat.mgmt.rpc_commands import Params, RpcCommands, RpcFault

log = logging.getLogger("kamflat.server.ctl")

DEFAULT_ADDRESS = "unixs:/run/kamailio/kamailio_ctl"     # the ctl module's default
MAX_PENDING_REPLY = 4 << 20     # a client that reads nothing is cut off past this
MAX_CONNECTIONS = 256       # ctl_max_connections' default
IDLE_TIMEOUT = 60.0         # ctl_idle_timeout's default (s)
FD_RESERVE = 64             # descriptors left for the FIFOs' replies and everything else
EVICT_IDLE = 0.1            # a connection this idle may be closed to make room at the cap
ACCEPT_RETRY = 1.0          # seconds without accepting after accept() ran out of something
OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def answer(packet, commands, defer=None):
    """The reply bytes for one request packet (a fault for anything wrong).

    With `defer`, a SLOW method is not run here: `defer(run)` gets the function
    that runs it and returns its reply bytes, and answer returns None.
    """
    def fault(code, message):
        return binrpc.encode_packet(binrpc.FAULT, packet.cookie,
                                    binrpc.encode_fault(code, message))

    if packet.type != binrpc.REQUEST:
        return fault(400, "bad request: not a request packet (type %d)" % packet.type)
    try:
        values = binrpc.decode_body(packet.body)
    except binrpc.BinrpcError as exc:
        return fault(400, "bad request: %s" % exc)
    if not values or not isinstance(values[0], str):
        return fault(400, "bad request method: the first record must be the method name")
    name, params = values[0], values[1:]
    method = commands.lookup(name)
    if method is None:
        return fault(500, "command %s not found" % name)

    def run():
        try:
            reply = commands.call(method, Params(params, "binrpc"))
        except RpcFault as exc:
            return fault(exc.code, exc.message)
        except Exception as exc:        # a bug in a command must not take the server down
            log.exception("ctl: %s failed", name)
            return fault(500, "internal server error: %s" % exc)
        return binrpc.encode_packet(binrpc.REPLY, packet.cookie,
                                    binrpc.encode_body(reply.values))

    if defer is not None and name in SLOW:
        defer(run)
        return None
    return run()


class _Client:
    def __init__(self, sock, now):
        self.sock = sock
        self.last_active = now
        self.reader = binrpc.PacketReader()
        self.out = bytearray()
        self.closing = False
        self.waiting = False    # a slow method of this client is running


class CtlServer:
    """binrpc over a socket: `open()`, `serve(stop_event)`, `close()`."""

    def __init__(self, address=None, management=None, mode=0o600, user=None, group=None,
                 max_connections=MAX_CONNECTIONS, idle_timeout=IDLE_TIMEOUT,
                 fd_reserve=FD_RESERVE):
        address = address or DEFAULT_ADDRESS
        self.max_connections = max(int(max_connections), 1)
        self.idle_timeout = idle_timeout or float("inf")     # 0: never
        self.fd_reserve = fd_reserve
        self.kind, self.target = parse_address(address)
        self.mode = mode
        self.user = user
        self.group = group
        self.commands = RpcCommands(management)
        self.address = address
        self._listener = None
        self._selector = None
        self._clients = collections.OrderedDict()     # fd -> client, the idlest first
        self._accepting = True
        self._accept_retry_at = None
        self._slow = None
        self.limited = LogLimiter(log)      # lines a client can cause, rate-limited

    def open(self):
        """Create and bind the socket. Raises OSError naming the address."""
        try:
            if self.kind in ("unix", "unixd"):
                self._open_unix()
            else:
                family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
                kind = socket.SOCK_STREAM if self.kind == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(family, kind)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(self.target)
                self._listener = sock
                host, port = sock.getsockname()[:2]
                self.address = "%s:%s:%d" % (self.kind, host, port)
            if self._listener.type == socket.SOCK_STREAM:
                self._listener.listen(64)
            self._listener.setblocking(False)
        except (OSError, KeyError) as exc:      # KeyError: unknown user or group name
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            raise OSError("cannot open ctl socket %s: %s" % (self.address, exc)) from exc
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._slow = SlowCalls("ctl-slow")
        self._selector.register(self._slow.wake_fd, selectors.EVENT_READ, self._slow)
        if self.connection_cap() < self.max_connections:
            log.warning("ctl: at most %d connections on %s (ctl_max_connections is %d, but "
                        "the fd limit is %d)", self.connection_cap(), self.address,
                        self.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def _open_unix(self):
        path = self.target
        remove_if(path, stat.S_ISSOCK)     # a stale socket of a previous run
        kind = socket.SOCK_STREAM if self.kind == "unix" else socket.SOCK_DGRAM
        self._listener = socket.socket(socket.AF_UNIX, kind)
        self._listener.bind(path)
        os.chmod(path, self.mode)
        uid, gid = owner_ids(self.user, self.group)
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)

    def close(self):
        """Close every connection and the socket; remove a unix socket file."""
        if self._slow is not None:
            self._slow.close()      # waits for a running rotation; its reply is dropped
            self._slow = None
        for client in list(self._clients.values()):
            self._disconnect(client)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.kind in ("unix", "unixd"):
                remove_if(self.target, stat.S_ISSOCK)

    def serve(self, stop_event):
        """Answer requests until `stop_event` is set (checked at least every 50 ms)."""
        serve_until(stop_event, self.serve_once, log)

    def serve_once(self, timeout):
        now = time.monotonic()
        if not self._accepting and self._accept_retry_at is not None \
                and now >= self._accept_retry_at:
            self._resume_accepting()
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                self._on_listener()
            elif key.data is self._slow:
                self._on_slow_done()
                continue
            elif mask & selectors.EVENT_READ:
                self._on_readable(key.data)
            if key.data is not None and mask & selectors.EVENT_WRITE:
                self._flush(key.data)
        now = time.monotonic()
        self._close_idle(now)
        self.limited.tick(now)

    # -- the connection budget

    def connection_cap(self):
        """ctl_max_connections, or less when the fd limit (read now: it may be lowered
        while the server runs) leaves fewer descriptors beside `fd_reserve`."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(min(self.max_connections, soft - self.fd_reserve), 1)

    def _pause_accepting(self, retry_at=None):
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._accept_retry_at = retry_at

    def _resume_accepting(self):
        if not self._accepting:
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._accepting = True
            self._accept_retry_at = None

    def _make_room(self, now):
        """At the cap: close the idlest connection if it may go; False if none may."""
        for client in self._clients.values():
            if client.waiting:
                continue
            if now - client.last_active < EVICT_IDLE:
                return False
            self.limited.log(logging.INFO, "ctl: %d connections open on %s (the limit): "
                             "closing the one idle longest", len(self._clients), self.address)
            self._disconnect(client)
            return True
        return False

    def _close_idle(self, now):
        for client in list(self._clients.values()):
            if now - client.last_active < self.idle_timeout:
                break       # the rest were active more recently
            if client.waiting:
                self._touch(client, now)
                continue
            self.limited.log(logging.INFO, "ctl: closing a connection on %s idle for %.0f s",
                             self.address, self.idle_timeout)
            self._disconnect(client)
        if not self._accepting and self._accept_retry_at is None \
                and len(self._clients) >= self.connection_cap():
            self._make_room(now)            # which resumes accepting

    def _touch(self, client, now=None):
        client.last_active = time.monotonic() if now is None else now
        if self._clients.get(client.sock.fileno()) is client:
            self._clients.move_to_end(client.sock.fileno())

    # -- datagrams: one packet in, one packet back to the sender

    def _on_listener(self):
        if self._listener.type == socket.SOCK_DGRAM:
            while True:
                try:
                    data, peer = self._listener.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                self._on_datagram(data, peer)
        while True:
            now = time.monotonic()
            if len(self._clients) >= self.connection_cap() and not self._make_room(now):
                if self._accepting:
                    log.warning("ctl: not accepting on %s: %d connections open, the most "
                                "allowed, none idle for %.1f s yet", self.address,
                                len(self._clients), EVICT_IDLE)
                self._pause_accepting()     # until a connection closes or may be closed
                return
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF:
                    self.limited.error("ctl: accept on %s failed: %s", self.address, exc)
                    return
                # the listener would stay readable and spin the loop: stop accepting,
                # keep serving the connected clients
                if self._accept_retry_at is None:
                    log.error("ctl: accept on %s failed: %s; not accepting until a "
                              "descriptor is free", self.address, exc)
                self._pause_accepting(now + ACCEPT_RETRY)
                return
            if self._accept_retry_at is not None:
                log.warning("ctl: accepting on %s again", self.address)
                self._accept_retry_at = None
            sock.setblocking(False)
            client = _Client(sock, now)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_datagram(self, data, peer):
        reader = binrpc.PacketReader()
        reader.receive_data(data)
        packet = reader.next_event()
        if isinstance(packet, binrpc.StreamError):
            self.limited.error("ctl: bad datagram from %r: %s", peer, packet.reason)
            return
        if packet is binrpc.NEED_DATA:
            log.error("ctl: truncated datagram from %r", peer)
            return
        if not peer:
            log.error("ctl: datagram from an unbound unix socket: nowhere to reply")
            return
        reply = answer(packet, self.commands,
                       defer=lambda run: self._slow.submit(("datagram", peer), run))
        if reply is not None:
            self._send_datagram(reply, peer)

    def _send_datagram(self, reply, peer):
        try:
            self._listener.sendto(reply, peer)
        except OSError as exc:
            log.error("ctl: cannot reply to %r: %s", peer, exc)

    def _on_slow_done(self):
        for (kind, whom), reply in self._slow.finished():
            if kind == "datagram":
                if reply is not None:       # None: the helper thread logged why
                    self._send_datagram(reply, whom)
            elif self._clients.get(whom.sock.fileno()) is whom:     # still connected
                self._slow_reply(whom, reply)

    def _slow_reply(self, client, reply):
        client.waiting = False
        if reply is None:
            self._disconnect(client)
            return
        client.out += reply
        if client.sock.fileno() not in self._selector.get_map():    # it hung up meanwhile
            self._selector.register(client.sock, selectors.EVENT_WRITE, client)
        self._take_packets(client)
        self._flush(client)

    # -- streams

    def _on_readable(self, client):
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if client.waiting:      # it shut down its write side: answer, then hang up
                client.closing = True
                self._selector.unregister(client.sock)
                return
            self._disconnect(client)
            return
        self._touch(client)
        client.reader.receive_data(data)
        self._take_packets(client)
        self._flush(client)

    def _take_packets(self, client):
        """Answer the client's complete packets, in order, until one is slow."""
        while not client.closing and not client.waiting:
            packet = client.reader.next_event()
            if isinstance(packet, binrpc.StreamError):
                self.limited.error("ctl: bad packet on %s: %s; closing the connection",
                                   self.address, packet.reason)
                client.out += binrpc.encode_packet(binrpc.FAULT, 0,
                                                   binrpc.encode_fault(400, "bad request: %s"
                                                                       % packet.reason))
                client.closing = True
                break
            if packet is binrpc.NEED_DATA:
                break
            reply = answer(packet, self.commands, defer=lambda run: self._defer(client, run))
            if reply is not None:
                client.out += reply

    def _defer(self, client, run):
        client.waiting = True
        self._slow.submit(("stream", client), run)

    def _flush(self, client):
        while client.out:
            try:
                n = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._disconnect(client)
                return
            del client.out[:n]
            self._touch(client)
        if len(client.out) > MAX_PENDING_REPLY:
            log.error("ctl: client on %s does not read its replies; disconnected", self.address)
            self._disconnect(client)
            return
        if not client.out and client.closing:
            self._disconnect(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self._selector.modify(client.sock, events, client)

    def _disconnect(self, client):
        fd = client.sock.fileno()
        if fd in self._clients:
            del self._clients[fd]
            try:
                self._selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()
        if not self._accepting and self._selector is not None:
            self._resume_accepting()        # a descriptor is free again

