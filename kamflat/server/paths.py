"""Before binding: is a FIFO or unix socket path kamflat is about to create in use?

`check_free(places)` takes the model's Place list (config/model.py: every FIFO and
unix socket file the config names, with its statement) and raises PathInUse for the
first one a live server is behind:
- a unix socket that accepts a connect (stream, or datagram for ctl's unixd:);
- a FIFO with a reader: opening it O_WRONLY|O_NONBLOCK succeeds (ENXIO: nobody reads).
Nothing is written, and nothing of the running server is touched. A stale file left by
a server that died is not live; the code that creates the path replaces it, as
Kamailio replaces its FIFO.
"""
import errno
import os
import socket
import stat


class PathInUse(Exception):
    """One line: the path, the statement that named it, and who holds it."""


def check_free(places):
    """Raise PathInUse for the first place a live server is behind."""
    for place in places:
        holder = live_holder(place.path)
        if holder:
            raise PathInUse("%s: %s: %s is in use: %s; stop that server or give this one "
                            "another path" % (place.where, place.statement, place.path, holder))


def live_holder(path):
    """Why `path` belongs to a running server ("a server accepts connections on it",
    "a server reads it"), or None when it is absent, stale or something else."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return "a server accepts connections on it" if _socket_answers(path) else None
    if stat.S_ISFIFO(mode):
        return "a server reads it" if _fifo_has_reader(path) else None
    return None


def _socket_answers(path):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.settimeout(1.0)
        try:
            sock.connect(path)
            return True
        except OSError as exc:
            if exc.errno != errno.EPROTOTYPE:       # a datagram socket: try that way
                return exc.errno in (errno.EAGAIN, errno.ETIMEDOUT)  # backlog full: live
        finally:
            sock.close()
    return False


def _fifo_has_reader(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False                    # ENXIO: no reader; anything else: not ours to judge
    os.close(fd)
    return True
