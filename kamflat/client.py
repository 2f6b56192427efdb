"""Python client for the ingest socket (what `kamflat send` and the pytest plugin use).

    from kamflat.client import send
    result = send("/tmp/kamflat/ingest.sock",
                  [{"table": "acc", "values": ["INVITE", "ft", "", "c1", 200, "OK", 1795763336]}])
    assert result.ok, result.errors

`send` streams the lines while reading the server's answers (so a long run of bad
lines never deadlocks both sides), shuts down its write side and waits for the
server's final line: `done` once every accepted record is written, i.e. handed to the
OS by write() into the file at its path (with flush=0 that follows the block write,
at most about a second after the last line). A line is in the file exactly when the
server took it (`lines`) and answered no error for it: a stop that could not write
some lines answers each with "not written: ...".
"""
import json
import selectors
import socket
import time
from dataclasses import dataclass, field


class SendError(Exception):
    """The server could not be reached or closed the connection early."""


class ServerUnreachable(SendError):
    """Nothing accepts connections on the ingest socket."""


@dataclass
class Result:
    lines: int = 0          # lines the server took
    written: int = 0        # records in the file (handed to the OS)
    errors: list = field(default_factory=list)   # (line number, message)
    error_count: int = 0
    stopped: bool = False   # the server stopped before taking everything

    @property
    def ok(self):
        return not self.error_count and not self.stopped


def _as_line(item):
    if isinstance(item, bytes):
        line = item
    elif isinstance(item, str):
        line = item.encode()
    else:
        line = json.dumps(item, ensure_ascii=False).encode()
    return line if line.endswith(b"\n") else line + b"\n"


def encode_lines(records):
    """Records (dicts) or ready lines (str/bytes) as one stream of JSON lines."""
    return b"".join(_as_line(item) for item in records)


def send(path, records, timeout=60.0, on_error=None):
    """Send records to the ingest socket at `path`; return a Result."""
    return send_bytes(path, [encode_lines(records)], timeout=timeout, on_error=on_error)


def send_bytes(path, blocks, timeout=60.0, on_error=None):
    """Send an iterable of byte blocks holding JSON lines; return a Result.

    `on_error(line, message)` is called for each refused line as it arrives.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, path, time.monotonic() + timeout)
        sock.setblocking(False)
        return _exchange(sock, iter(blocks), timeout, on_error)
    finally:
        sock.close()


def _connect(sock, path, deadline):
    """Connect, waiting while the server's listen backlog is full (EAGAIN: it is busy, not
    gone, as a blocking connect would wait) until `deadline`."""
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError as exc:
            if time.monotonic() >= deadline:
                raise ServerUnreachable("cannot connect to the ingest socket %s: %s (its backlog "
                                        "stayed full)" % (path, exc.strerror)) from None
            time.sleep(0.01)
        except OSError as exc:
            raise ServerUnreachable("cannot connect to the ingest socket %s: %s"
                                    % (path, exc.strerror)) from None


def _exchange(sock, blocks, timeout, on_error):
    result = Result()
    pending = memoryview(b"")
    inbuf = b""
    writing = True
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            events = sel.select(timeout)
            if not events:
                raise SendError("no answer from the server within %.0f s" % timeout)
            _, mask = events[0]
            if mask & selectors.EVENT_WRITE:
                while writing:
                    if not pending:
                        block = next(blocks, None)
                        if block is None:
                            sock.shutdown(socket.SHUT_WR)
                            writing = False
                            sel.modify(sock, selectors.EVENT_READ)
                            break
                        pending = memoryview(block)
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        break
                    except (BrokenPipeError, ConnectionResetError):
                        # the server stopped reading us (a stop): its answers still come
                        writing = False
                        sel.modify(sock, selectors.EVENT_READ)
                        break
                    pending = pending[n:]
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    raise SendError("the server closed the connection without a final answer")
                inbuf += data
                *answers, inbuf = inbuf.split(b"\n")
                for answer in answers:
                    if _take_answer(json.loads(answer), result, on_error):
                        return result


def _take_answer(answer, result, on_error):
    """Fold one answer line into result; True when it was the last one."""
    if "error" in answer:
        result.error_count += 1
        result.errors.append((answer.get("line"), answer["error"]))
        if on_error:
            on_error(answer.get("line"), answer["error"])
        return False
    result.lines = answer["lines"]
    result.written = answer["written"]
    result.error_count = answer["errors"]
    result.stopped = bool(answer.get("stopping"))
    return True
