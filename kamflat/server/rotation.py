"""Synchronous rotation: tell every writer to close its files, wait until each has.

Kamailio's flat_rotate only stores a timestamp; each process reopens on its next
record, so an idle process keeps the renamed file open indefinitely and the reply
says nothing about when the renamed files are complete. kamflat says a rotation once,
as the `rotate N` message of kamflat.proto.link on each writer's control socket
(N numbers the rotations, so two in one second both count and a late answer is not
taken for the next rotation's); the reply comes only when all have answered, or when
the time limit has run out, in which case the reply names the writers that did not
answer. (A RotationCounter is for programs using kamflat.flatstore directly.)
"""
import selectors
import threading
import time

from kamflat.proto import link


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

    def rotate(self):
        with self.lock:
            self.generation += 1
            generation = self.generation
            self.statistics.add("flatstore", "rotations")
            errors = []
            waiting = {}
            for rank, sock in sorted(self.socks.items()):
                try:
                    sock.send(link.encode(link.Message("rotate", generation)))
                except OSError as exc:
                    errors.append("writer %d: %s" % (rank, exc))
                else:
                    waiting[sock] = rank
            errors += self._collect(waiting, generation)
            if errors:
                self.statistics.add("flatstore", "rotation_errors")
            return errors

    def _collect(self, waiting, generation):
        errors = []
        deadline = time.monotonic() + self.timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in self.selector.select(left):
                try:
                    answer = link.decode(key.fileobj.recv(4096))
                except BlockingIOError:
                    continue
                if answer.number != generation or key.fileobj not in waiting:
                    continue        # an answer to an earlier rotation that timed out
                rank = waiting.pop(key.fileobj)
                if answer.kind != "rotated":
                    errors.append("writer %d: %s" % (rank, answer.body))
        for rank in sorted(waiting.values()):
            errors.append("writer %d did not close its files within %d ms"
                          % (rank, self.timeout * 1000))
        return errors
