"""IO the management servers share: server FIFOs, reply FIFOs, owners, slow calls,
rate-limited logging, the loop.

The MI FIFO (`mi_fifo.py`) and the JSON-RPC FIFO (`jsonrpc_fifo.py`) follow the
same rules for both ends of a request, because Kamailio's jsonrpcs copied them
from mi_fifo: the reply FIFO's name rules are pure and live in `mi.py`
(`check_reply_name`); opening the reply FIFO safely, making the server FIFO,
recreating it when someone deletes it while the server runs, and removing it
again are here. The engine both FIFO servers run on (their loop and reply jobs) is
`fiforeply.py`. The ctl socket uses the owner lookup, the helper thread for slow
commands and the loop too.
"""
import collections
import errno
import fcntl
import grp
import logging
import os
import pwd
import selectors
import stat
import threading
import time

log = logging.getLogger("kamflat.server.fifoio")

POLL_INTERVAL = 0.05
PIPE_SIZE = 4096


class ReplyRefused(Exception):
    """The reply FIFO cannot be used: drop the request (the message says why)."""


class NoDescriptor(ReplyRefused):
    """The process is out of descriptors (EMFILE, ENFILE) right now: worth a retry."""


def open_reply_fifo(path):
    """Open a reply FIFO O_WRONLY|O_NONBLOCK after Kamailio's security checks.

    Returns the fd, or None when it has no reader yet (ENXIO: try again later).
    Raises ReplyRefused (with Kamailio's wording) when it must not be used, and its
    NoDescriptor when no descriptor is free now (try again later too). Unlike
    Kamailio, which opens first and checks after, this checks with lstat before
    opening, so a regular file or device named by a client is never opened; the
    fstat after opening must then show the same inode, still not hard-linked.
    """
    try:
        st = os.lstat(path)
    except ValueError:
        raise ReplyRefused("Forbidden reply fifo filename: %r" % path) from None
    except OSError as e:
        raise ReplyRefused("open error (%s): %s" % (path, e.strerror)) from None
    if stat.S_ISLNK(st.st_mode):
        raise ReplyRefused("security: %s is a soft link" % path)
    if not stat.S_ISFIFO(st.st_mode):
        raise ReplyRefused("security: %s is not a fifo" % path)
    if st.st_nlink > 1:
        raise ReplyRefused("security: %s is hard-linked %d times" % (path, st.st_nlink))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        if e.errno == errno.ELOOP:      # replaced by a symlink since the lstat
            raise ReplyRefused("security: %s is a soft link" % path) from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise NoDescriptor("open error (%s): %s" % (path, e.strerror)) from None
        raise ReplyRefused("open error (%s): %s" % (path, e.strerror)) from None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or fst.st_nlink > 1:
        os.close(fd)
        raise ReplyRefused("security: %s changed while it was being opened" % path)
    return fd


class ServerFifo:
    """The FIFO a server reads requests from, at `path`.

    `create()` makes it under a temporary name, opens it, sets mode and owner, then
    renames it over whatever is at `path` (a stale FIFO or file: Kamailio replaces
    it too), so no client ever finds the FIFO without its reader. `remove()` unlinks
    it only while it is still the one created here.

    Its pipe buffer is made small (`pipe_size`, PIPE_SIZE: one page, which still
    takes any request of up to PIPE_BUF bytes in one atomic write): when one client
    floods the FIFO, a request another client has written waits behind at most that
    many bytes of the flood, instead of the default 64 KiB.
    """

    def __init__(self, path, mode=0o660, user=None, group=None, pipe_size=PIPE_SIZE):
        self.path = path
        self.pipe_size = pipe_size
        self.mode = mode
        self.user = user
        self.group = group
        self._ident = None          # (st_dev, st_ino) of the FIFO we created

    def create(self, replace=True):
        """(Re)create the FIFO; returns its fd, open O_RDWR|O_NONBLOCK so it never
        sees EOF. An fd of an earlier create() is the caller's to close.
        With replace=False (recreating one that was deleted), a file someone else put
        at `path` meanwhile is left alone: FileExistsError.
        Raises OSError, or KeyError for an unknown user or group name."""
        tmp = "%s.kamflat-%d" % (self.path, os.getpid())
        fd = None
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.mkfifo(tmp, 0o600)
            fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            if self.pipe_size:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, self.pipe_size)
            os.chmod(tmp, self.mode)
            uid, gid = owner_ids(self.user, self.group)
            if uid != -1 or gid != -1:
                os.chown(tmp, uid, gid)
            if replace:
                os.rename(tmp, self.path)
            else:
                os.link(tmp, self.path)     # fails, instead of clobbering, if taken
                os.unlink(tmp)
        except (OSError, KeyError):
            if fd is not None:
                os.close(fd)
                os.unlink(tmp)
            raise
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        return fd

    def is_ours(self):
        """Is the file at `path` still the FIFO create() made?"""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ident

    def remove(self):
        if self.is_ours():
            os.unlink(self.path)


class WatchedFifo:
    """A ServerFifo served from a selector loop, recreated at once if someone deletes
    it or renames it away while the server runs (Kamailio creates it only at startup;
    OpenSIPS checks every 30 s), so clients never find the server gone.

    pyinotify on the FIFO's directory says when (imported here, lazily: it is
    optional, and on 3.12+ it needs pyasyncore); without it, `tick()` lstats the path
    every POLL_INTERVAL (the longest an idle loop waits between two turns anyway).
    `watch` says which it is: "inotify" or "stat".
    """

    def __init__(self, fifo, logger, what):
        self.fifo = fifo            # the ServerFifo
        self.fd = None              # the FIFO's current fd, registered with the selector
        self.watch = None
        self._log = logger          # the server's logger, named in its log lines as `what`
        self._what = what
        self._sel = None
        self._on_bytes = None
        self._notifier = None
        self._inotify_fd = None
        self._failing = False       # the FIFO is gone and could not be made again yet
        self._next_check = 0.0      # monotonic time of tick()'s next lstat

    def open(self, selector, on_bytes):
        """Create the FIFO, register it with `selector` (key.data is `on_bytes(fd, mask)`)
        and start watching it. Raises what ServerFifo.create raises."""
        self._sel, self._on_bytes = selector, on_bytes
        self._replace(self.fifo.create())
        self._start_watch()

    def tick(self, now):
        """Call on every loop turn with time.monotonic(). Without inotify this is where a
        deletion is noticed; with it, this still catches what the watch cannot see (its
        directory deleted and made again kills the watch). It looks at most every
        POLL_INTERVAL: a busy loop would otherwise lstat once per request, for nothing
        an idle loop does not notice as soon."""
        if now >= self._next_check:
            self._next_check = now + POLL_INTERVAL
            self._check()

    def close(self):
        """Stop watching, close the FIFO and remove it (if it is still the one made here).
        Call it before closing the selector."""
        if self._notifier is not None:
            self._sel.unregister(self._inotify_fd)
            self._notifier.stop()
            self._notifier = None
        if self.fd is not None:
            self._sel.unregister(self.fd)
            os.close(self.fd)
            self.fd = None
            self.fifo.remove()

    def _replace(self, fd):
        old, self.fd = self.fd, fd
        self._sel.register(fd, selectors.EVENT_READ, self._on_bytes)
        if old is not None:     # bytes written before the old one was deleted still count
            self._on_bytes(old, selectors.EVENT_READ)
            self._sel.unregister(old)
            os.close(old)

    def _check(self):
        """Recreate the FIFO if it is gone. Logs once per outage, not once per retry."""
        if os.path.lexists(self.fifo.path):
            return
        if not self._failing:
            self._log.warning("%s %s was removed; recreating it", self._what, self.fifo.path)
        try:
            self._replace(self.fifo.create(replace=False))
        except FileExistsError:
            return      # someone else made a file there in the meantime: theirs now
        except (OSError, KeyError) as e:
            if not self._failing:
                self._log.error("cannot create %s %s: %s (retrying until it works)",
                                self._what, self.fifo.path, getattr(e, "strerror", None) or e)
            self._failing = True
            return
        if self._failing:
            self._log.warning("%s %s is back", self._what, self.fifo.path)
            self._failing = False

    def _start_watch(self):
        try:
            import pyinotify
            manager = pyinotify.WatchManager()
            try:        # quiet=False: a watch that cannot be added raises instead of never firing
                manager.add_watch(os.path.dirname(os.path.abspath(self.fifo.path)),
                                  pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM, quiet=False)
                notifier = pyinotify.Notifier(manager, lambda event: None, timeout=0)
            except Exception:
                manager.close()
                raise
        except Exception as e:      # not installed, no asyncore, no inotify instance or watch left
            self._log.debug("pyinotify unavailable (%s): checking the %s on every tick",
                            e, self._what)
            self.watch = "stat"
            return
        self._notifier, self._inotify_fd = notifier, manager.get_fd()
        self._sel.register(self._inotify_fd, selectors.EVENT_READ, self._on_inotify)
        self.watch = "inotify"

    def _on_inotify(self, fd, mask):
        self._notifier.read_events()
        self._notifier.process_events()
        self._check()


class SlowCalls:
    """Runs the commands that wait for other processes (flat_rotate waits for every
    writer, up to rotate_timeout) on one helper thread, so the server's event loop
    goes on serving every other client meanwhile. Calls run one at a time, in order.
    (The FIFO servers wait for a rotation's writers in their own loop: they use this
    only for a rotation that must wait for another one first; see fiforeply.py.)

    The loop registers `wake_fd` for reading; once it is readable, `finished()`
    gives (tag, result) for each call done since. A call that raises gives None
    (the servers' own runners already turn errors into replies; this is a backstop).
    `wake_for(tag, result)`, if given, says whether the loop must be woken for a
    result: one it is not woken for waits until the loop looks (`done`), which a
    loop that asks for that looks at before every wait for IO.

    The hand-off is on every slow request's round trip, so it is kept short: a
    plain thread (no executor, no futures) that sleeps in a blocking read of a pipe
    and is woken by one byte. os.write lets go of the GIL while it writes, so the
    woken thread can take the GIL and run the call at once; a lock or queue would
    wake it while the loop still holds the GIL, to fall asleep again on it.
    """

    def __init__(self, name, wake_for=None):
        self._name = name
        self._wake_for = wake_for
        self._thread = None         # started on the first call
        self._calls = collections.deque()
        self._done = collections.deque()
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # to the loop
        self._go_r, self._go_w = os.pipe2(os.O_CLOEXEC)                     # to the thread
        os.set_blocking(self._go_w, False)

    def submit(self, tag, call):
        """Run call() on the helper thread; its result comes back with `tag`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._calls.append((tag, call))
        self._go()

    def _go(self):
        try:
            os.write(self._go_w, b"!")
        except BlockingIOError:
            pass        # the pipe is full: the thread has wake-ups enough to come

    def _work(self):
        while True:
            os.read(self._go_r, 4096)   # a byte written after each call was queued
            while self._calls:
                item = self._calls.popleft()
                if item is None:
                    return
                self._call(*item)

    def _call(self, tag, call):
        try:
            result = call()
        except Exception:
            log.exception("%s: slow command failed", self._name)
            result = None
        self._done.append((tag, result))
        # appended before asking: a loop that looks at `done` after queueing what
        # wake_for checks either sees this result or is woken for it
        if self._wake_for is not None and not self._wake_for(tag, result):
            return
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass        # the pipe is full: the loop is already being woken

    @property
    def done(self):
        """Are there results finished() has not given yet?"""
        return bool(self._done)

    def finished(self, woken=True):
        """The (tag, result) of every call done since the last time; `woken`: the loop
        was woken by `wake_fd` (empties the pipe)."""
        while woken:
            try:
                if not os.read(self.wake_fd, 4096):
                    break
            except BlockingIOError:
                break
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done

    def close(self):
        """Wait for the calls still running or queued, close the pipe; returns the
        (tag, result) pairs the loop has not collected (nobody will deliver those now)."""
        if self._thread is not None:
            self._calls.append(None)
            self._go()
            self._thread.join()
            self._thread = None
        left = list(self._done)
        self._done.clear()
        for fd in (self.wake_fd, self._wake_w, self._go_r, self._go_w):
            os.close(fd)
        return left


class LogLimiter:
    """Log lines that clients can cause, rate-limited: one line per bad request would
    let one client flood the log and slow the loop down for every other client.

    Per kind of line (its format string) and per INTERVAL: the same line (same
    arguments) is logged once, and at most BURST different ones; the rest are counted,
    and when the interval is over the last of them is logged with
    "(N more like this)". `tick(now)` on every loop turn says when.
    """

    INTERVAL = 1.0
    BURST = 10

    def __init__(self, logger):
        self._log = logger
        self._kinds = {}            # format -> [interval end, lines logged, held, last held]
        self._lock = threading.Lock()   # a server's helper thread logs through it too

    def warning(self, fmt, *args):
        self.log(logging.WARNING, fmt, *args)

    def error(self, fmt, *args):
        self.log(logging.ERROR, fmt, *args)

    def log(self, level, fmt, *args):
        with self._lock:
            self._log_locked(level, fmt, args)

    def _log_locked(self, level, fmt, args):
        now = time.monotonic()
        kind = self._kinds.get(fmt)
        if kind is not None and now >= kind[0]:
            self._release(fmt, kind)
            kind = None
        if kind is None:
            kind = self._kinds[fmt] = [now + self.INTERVAL, set(), 0, None]
        if args in kind[1] or len(kind[1]) >= self.BURST:
            kind[2] += 1
            kind[3] = (level, args)
            return
        kind[1].add(args)
        self._log.log(level, fmt, *args)

    def tick(self, now):
        if not self._kinds:
            return
        with self._lock:
            for fmt, kind in list(self._kinds.items()):
                if now >= kind[0]:
                    self._release(fmt, kind)

    def _release(self, fmt, kind):
        del self._kinds[fmt]
        if kind[2]:
            level, args = kind[3]
            self._log.log(level, fmt + " (%d more like this)", *args, kind[2])


def owner_ids(user, group):
    """(uid, gid) for a user and group given as numbers or names; None leaves one as
    it is (-1). Raises KeyError for an unknown name ("" too, as Kamailio's user2uid)."""
    def numeric(value, lookup, attr):
        if value is None:
            return -1
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        return getattr(lookup(value), attr)
    return numeric(user, pwd.getpwnam, "pw_uid"), numeric(group, grp.getgrnam, "gr_gid")


def remove_if(path, is_kind):
    """Unlink `path` if it is (still) of the kind this server created."""
    try:
        if is_kind(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def serve_until(stop_event, serve_once, logger):
    """A transport's main loop: `serve_once(timeout)` until `stop_event` is set.
    An unexpected error in one turn is logged and the loop goes on, so one bad
    request cannot stop the transport for every other client."""
    while not stop_event.is_set():
        try:
            serve_once(POLL_INTERVAL)
        except Exception:
            logger.exception("unexpected error; continuing")
            time.sleep(POLL_INTERVAL)
