"""Synchronous rotation: tell every writer to close its files, wait until each has.

Kamailio's flat_rotate only stores a timestamp; each process reopens on its next
record, so an idle process keeps the renamed file open indefinitely and the reply
says nothing about when the renamed files are complete. kamflat says a rotation once,
as the `rotate N` message of kamflat.proto.link on each writer's control socket
(N numbers the rotations, so two in one second both count and a late answer is not
taken for the next rotation's); the reply comes only when all have answered, or when
the time limit has run out, in which case the reply names the writers that did not
answer. (A RotationCounter is for programs using kamflat.flatstore directly.)

A rotation is a `Rotation`: begun (the messages sent), then the answers taken as they
come, then finished (what failed, or nothing). `Rotator.rotate()` does all three and
waits; a FIFO server's loop begins one with `Rotator.begin(blocking=False)` and takes
the answers from its own select loop, so no thread waits for the writers and the loop
serves everyone else meanwhile. One rotation at a time, whichever transport asks: a
Rotation holds the Rotator's lock from begin to finish.
"""
import selectors
import threading
import time

from kamflat.proto import link


class Rotation:
    """One rotation under way: `take_ready()` when `fileno()` is readable (it is the
    Rotator's selector: one descriptor for every writer), `done` once every writer
    answered, `deadline` (monotonic) when to stop waiting, `finish()` for the errors.
    A Rotation of no writers is done at once."""

    def __init__(self, generation, waiting, errors, timeout, statistics, lock, selector):
        self.generation = generation
        self.waiting = waiting      # socket -> rank of the writers yet to answer
        self.errors = errors
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._statistics = statistics
        self._lock = lock
        self._selector = selector

    @property
    def done(self):
        return not self.waiting

    def fileno(self):
        return self._selector.fileno()

    def take_ready(self, timeout=0):
        """Take every answer there is, waiting up to `timeout` s for the first."""
        for key, _ in self._selector.select(timeout):
            self._take(key.fileobj)

    def _take(self, sock):
        """Read one answer from `sock` (a writer's control socket)."""
        try:
            answer = link.decode(sock.recv(4096))
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:    # an error for that writer, not a crash
            rank = self.waiting.pop(sock, None)
            if rank is not None:
                self.errors.append("writer %d: %s" % (rank, exc))
            return
        if answer.number != self.generation or sock not in self.waiting:
            return          # an answer to an earlier rotation that timed out
        rank = self.waiting.pop(sock)
        if answer.kind != "rotated":
            self.errors.append("writer %d: %s" % (rank, answer.body))

    def finish(self):
        """The errors, one for each writer that has not answered too; the next rotation
        may begin. Call it once."""
        errors = self.errors + ["writer %d did not close its files within %d ms"
                                % (rank, self.timeout * 1000)
                                for rank in sorted(self.waiting.values())]
        self.waiting = {}
        if errors:
            self._statistics.add("flatstore", "rotation_errors")
        self._lock.release()
        return errors


class Rotator:
    def __init__(self, control_socks, timeout, statistics):
        """control_socks: {rank: socket}, the management ends of the writers' control pairs."""
        self.generation = 0      # the rotations asked for so far
        self.socks = dict(control_socks)
        self.timeout = timeout
        self.statistics = statistics
        self.lock = threading.Lock()     # one rotation at a time, whichever transport asks
        # One selector for the Rotator's life, every control socket in it (the master
        # keeps both ends of each pair open, so none ever reads as closed).
        self.selector = selectors.DefaultSelector()
        for sock in self.socks.values():
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)

    def begin(self, blocking=True):
        """Tell every writer to rotate; the Rotation, or None when another rotation is
        under way and `blocking` is false."""
        if not self.lock.acquire(blocking):
            return None
        try:
            self.generation += 1
            self.statistics.add("flatstore", "rotations")
            errors, waiting = [], {}
            for rank, sock in sorted(self.socks.items()):
                try:
                    sock.send(link.encode(link.Message("rotate", self.generation)))
                except OSError as exc:
                    errors.append("writer %d: %s" % (rank, exc))
                else:
                    waiting[sock] = rank
            return Rotation(self.generation, waiting, errors, self.timeout, self.statistics,
                            self.lock, self.selector)
        except BaseException:
            self.lock.release()
            raise

    def rotate(self):
        """A whole rotation, waiting for the answers: the errors (none: complete)."""
        rotation = self.begin()
        try:
            while not rotation.done:
                left = rotation.deadline - time.monotonic()
                if left <= 0:
                    break
                rotation.take_ready(left)
        finally:
            errors = rotation.finish()
        return errors
