"""The engine under both FIFO servers (MI and JSON-RPC): reply jobs and the loop.

`FifoServer` is the loop both servers are: the server FIFO (`fifoio.WatchedFifo`),
a protocol reader (`receive_data` / `next_event` / `abandon` / `pending`), bounded
work per loop turn, the idle timeout of half a request, and the reply jobs. A server
says only how it turns its reader's events into jobs (`on_event`).

Bounded work per turn: at most READS_PER_TURN reads and EVENTS_PER_TURN events, then
the timers and the replies get their turn; bytes are read only once the reader has
handed out everything before them, so a flood waits in the pipe (its writer blocks),
not in memory.

A parsed request becomes a job: its reply FIFO's path, a label for the log (the
command) and `run`, the function that runs the command and returns the reply bytes.
`ReplyJobs` takes each job from there to "reply read by its client", without ever
holding up another client:

1. The reply FIFO is opened (`fifoio.open_reply_fifo`: a FIFO, not a symlink, not
   hard-linked). While it has no reader yet (ENXIO), or the process has no
   descriptor free (EMFILE, ENFILE), it is retried every RETRY_INTERVAL for
   `reply_open_wait` seconds, then the job is dropped. The command
   runs only once its reply FIFO is open, so a command whose client is gone never runs
   (kamctl starts its `cat` just after writing the request: hence the wait).
2. Then `run()` runs. A rotation (a job given `rotation`) is begun here and its
   writers' answers are read in this loop, like any other IO; once all have answered
   (or the rotation's time limit is over) its reply is made from what failed, and the
   loop has gone on serving everyone else meanwhile. The other slow commands, and a
   rotation asked for while another is under way (which it must wait for), run on a
   helper thread. A slow job is handed to the helper only when the loop turn is over,
   just before the loop waits for IO, so the two threads do not take the GIL from
   each other meanwhile.
3. The reply is written without blocking; a reader that has not taken all of it after
   `reply_write_timeout` seconds is given up. The helper thread writes a slow
   command's reply itself and closes the reply FIFO when the pipe took all of it (a
   reply to a rotation is a line or two): its client has its EOF without waiting for
   the loop to wake up; whatever the pipe did not take, the loop writes. The helper
   wakes the loop only when the loop has something to do about it (write the rest,
   start the next job for the same reply FIFO); otherwise the loop takes note at its
   next turn.

Replies to one reply FIFO go out one after another, in request order, and at most
MAX_QUEUED_PER_REPLY jobs wait for one reply FIFO: a client that floods requests
fills only its own queue (the rest are dropped, counted and logged with a rate limit).

The timeouts, one set for both servers (they take keyword arguments of these names):

    reply_open_wait       0.4 s  how long a reply FIFO may have no reader (Kamailio:
                                 4 retries 80 ms apart, blocking everyone meanwhile)
    reply_write_timeout   5.0 s  how long a reader may take to read its whole reply
    request_idle_timeout  2.0 s  how long half a request may wait for its next byte
                                 before the server's reader abandons it (the readers
                                 are the servers', so this one is used there)
"""
import collections
import os
import selectors
import time

from kamflat.proto.sansio import NEED_DATA
from kamflat.server.fifoio import (LogLimiter, NoDescriptor, ReplyRefused, SlowCalls,
                                   open_reply_fifo, serve_until)

REPLY_OPEN_WAIT = 0.4
REPLY_WRITE_TIMEOUT = 5.0
REQUEST_IDLE_TIMEOUT = 2.0
RETRY_INTERVAL = 0.004
MAX_QUEUED_PER_REPLY = 16


class ReplyJob:
    """One request on its way to its reply FIFO."""

    __slots__ = ("path", "label", "run", "slow", "begin", "answer", "rotating", "fd", "data",
                 "offset", "give_up", "next_try", "delivered")

    def __init__(self, path, label, run, slow, rotation=None):
        self.path = path
        self.label = label          # the command, for the log
        self.run = run              # () -> reply bytes, or an object with .action() (MI kill)
        self.slow = slow            # run it on the helper thread
        # a rotation: begin() -> Rotation or None, answer(errors) -> what run() returns
        self.begin, self.answer = rotation or (None, None)
        self.rotating = None        # the Rotation begun, while it waits for answers
        self.fd = None
        self.data = None
        self.offset = 0
        self.give_up = self.next_try = 0.0
        self.delivered = False      # the helper thread wrote the whole reply and closed it


class ReplyJobs:
    """The jobs of one server. `open(selector)` before the first job, `tick(now)` on
    every loop turn, `next_timeout(longest)` for the select, `close()` at the end.

    `what` names the server in the log lines (written to `logger`); `on_drop()` is
    called for every job that is dropped (for a statistic).
    """

    def __init__(self, what, logger, *, reply_open_wait=REPLY_OPEN_WAIT,
                 reply_write_timeout=REPLY_WRITE_TIMEOUT, on_drop=None):
        self.what = what
        self.reply_open_wait = reply_open_wait
        self.reply_write_timeout = reply_write_timeout
        self.log = LogLimiter(logger)
        self._on_drop = on_drop or (lambda: None)
        self._queues = {}           # path -> deque of jobs; the first one is in progress
        self._opening = {}          # jobs whose reply FIFO has no reader yet (ordered set)
        self._writing = {}          # fd -> job whose reply waits for the reader to drain
        self._to_helper = []        # slow jobs whose reply FIFO is open: start_slow() hands them on
        self._rotating = {}         # jobs whose rotation waits for writers' answers (ordered set)
        self._sel = None
        self._slow = None
        self._closing = False

    def open(self, selector):
        self._sel = selector
        self._slow = SlowCalls(self.what.replace(" ", "-").lower() + "-slow",
                               wake_for=self._wake_for)
        selector.register(self._slow.wake_fd, selectors.EVENT_READ, self._on_slow_done)

    def close(self):
        """Drop what is left (finishing a slow command first); close every reply FIFO."""
        self._closing = True
        for job in list(self._rotating):
            # before the helper: a rotation waiting there for this one's lock must get it
            self._end_rotation(job, deliver=False)
            self._finish(job, "server shutting down")
        if self._slow is not None:
            self.start_slow()
            for job, _ in self._slow.close():
                if job.delivered:
                    self._done(job)
                else:
                    self._finish(job, "server shutting down")
            self._slow = None
        for queue in list(self._queues.values()):
            for job in list(queue):
                if job.fd is None:
                    self._drop(job, "server shutting down")
                else:
                    self._finish(job, "server shutting down before the reply was read")
        self.log.tick(float("inf"))

    def submit(self, path, label, run, slow=False, rotation=None):
        """Queue a job for the reply FIFO at `path` (see the module docstring).

        rotation: for a rotation, (begin, answer): begin() -> a Rotation
        (kamflat.server.rotation), or None when one is under way already (then run()
        goes to the helper thread, where it waits for that one); answer(errors) -> what
        run() returns, from the rotation's errors."""
        job = ReplyJob(path, label, run, slow, rotation)
        queue = self._queues.get(path)
        if queue is None:           # nothing else waits for this reply FIFO: the usual case
            self._queues[path] = collections.deque((job,))
            self._begin(job, time.monotonic())
            return
        if queue and queue[0].delivered:
            # its client may ask again as soon as it has its EOF, before the helper's note
            # that it is done comes: it is done, the new job need not wait behind it
            self._done(queue[0])
            queue = self._queues.get(path)
        if queue is None:
            queue = self._queues[path] = collections.deque()
        if len(queue) >= MAX_QUEUED_PER_REPLY:
            self._on_drop()
            self.log.warning("%s: dropped request %r (reply to %s): %d requests already "
                             "wait for that reply FIFO", self.what, label, path, len(queue))
            return
        queue.append(job)
        if len(queue) == 1:
            self._begin(job, time.monotonic())

    def start_slow(self):
        """Take note of the slow jobs the helper finished without waking the loop (a
        new job for the same reply FIFO does not wait for this: see submit()), then
        hand the ones whose reply FIFO opened in this loop turn to the helper thread;
        the loop calls it just before it waits for IO."""
        if self._slow.done:
            self._on_slow_done(None, None)
        if self._to_helper:
            for job in self._to_helper:
                self._slow.submit(job, lambda job=job: self._run_and_write(job))
            self._to_helper.clear()

    def next_timeout(self, longest):
        """How long the loop may wait for IO before a job needs a retry (or a rotation's
        time limit is over)."""
        if not self._opening and not self._rotating:
            return longest
        soonest = min([job.next_try for job in self._opening] +
                      [job.rotating.deadline for job in self._rotating])
        return max(0.0, min(longest, soonest - time.monotonic()))

    def tick(self, now):
        """Retry the opens that are due, give up on replies nobody reads."""
        if self._opening:
            for job in [j for j in self._opening if j.next_try <= now]:
                self._try_open(job, now)
        if self._rotating:
            for job in [j for j in self._rotating if j.rotating.deadline <= now]:
                self._end_rotation(job)
        if self._writing:
            for job in [j for j in self._writing.values() if j.give_up <= now]:
                self._finish(job, "the reader did not read it within %.1f s"
                             % self.reply_write_timeout)
        self.log.tick(now)

    # -- one job ---------------------------------------------------------------

    def _begin(self, job, now):
        job.give_up = now + self.reply_open_wait
        self._try_open(job, now)

    def _try_open(self, job, now):
        waiting_for = "nobody opened it for reading"
        try:
            fd = open_reply_fifo(job.path)
        except NoDescriptor as busy:        # a descriptor may free up: retried like ENXIO
            fd, waiting_for = None, str(busy)
        except ReplyRefused as refused:
            self._drop(job, str(refused))
            return
        if fd is None:
            if now >= job.give_up:
                self._drop(job, "no client at %s (%s within %.0f ms)"
                           % (job.path, waiting_for, self.reply_open_wait * 1000))
            else:
                job.next_try = now + RETRY_INTERVAL
                self._opening[job] = None
            return
        self._opening.pop(job, None)
        job.fd = fd
        if job.begin is not None:
            self._begin_rotation(job)
        elif job.slow:
            self._to_helper.append(job)
        else:
            self._deliver(job, job.run())

    # -- a rotation, in the loop ------------------------------------------------

    def _begin_rotation(self, job):
        try:
            rotation = job.rotating = job.begin()
        except Exception as exc:    # the client is told, as when a command fails
            self.log.error("%s: rotation for %s failed: %s", self.what, job.path, exc)
            self._deliver(job, job.answer(["rotation failed: %s" % exc]))
            return
        if rotation is None:        # another one is under way: the helper waits for it
            self._to_helper.append(job)
            return
        if rotation.done:           # no writer to wait for
            self._end_rotation(job)
            return
        self._rotating[job] = None
        self._sel.register(rotation, selectors.EVENT_READ, lambda fd, mask: self._on_answers(job))

    def _on_answers(self, job):
        job.rotating.take_ready()
        if job.rotating.done:
            self._end_rotation(job)

    def _end_rotation(self, job, deliver=True):
        """Every writer answered, or the time is up: the reply from what failed."""
        rotation, job.rotating = job.rotating, None
        if job in self._rotating:
            del self._rotating[job]
            self._sel.unregister(rotation)
        errors = rotation.finish()
        if deliver:
            self._deliver(job, job.answer(errors))

    @staticmethod
    def _run_and_write(job):
        """On the helper thread: run the command, write its reply in one write and
        close the reply FIFO if the pipe took it all (job.fd is then None). Anything
        else (a partial write, an error, no bytes to write) is left to the loop,
        which goes on from job.offset and reports what happens. `delivered` is set
        before the close, since the EOF lets the client ask again at once."""
        result = job.run()
        if isinstance(result, (bytes, bytearray)):
            try:
                job.offset = os.write(job.fd, result)
            except OSError:
                return result
            if job.offset == len(result):
                fd, job.fd, job.delivered = job.fd, None, True     # before the EOF it causes
                os.close(fd)
        return result

    def _wake_for(self, job, result):
        """On the helper thread: does the loop have to act on this job now?"""
        return job.fd is not None or len(self._queues.get(job.path, ())) > 1

    def _on_slow_done(self, fd, mask):
        for job, result in self._slow.finished(woken=fd is not None):
            if job.delivered:
                self._done(job)     # nothing if submit() saw it done first
            else:
                self._deliver(job, result)

    def _deliver(self, job, result):
        if not isinstance(result, (bytes, bytearray)):
            # None: the command failed past every handler (logged by SlowCalls);
            # otherwise MI `kill`: close without a byte, then act
            os.close(job.fd)
            job.fd = None
            self._done(job)
            if result is not None:
                result.action()
            return
        job.data = result
        self._write(job)

    def _write(self, job):
        try:
            while job.offset < len(job.data):
                job.offset += os.write(job.fd, job.data[job.offset:] if job.offset else job.data)
        except BlockingIOError:
            if job.fd not in self._writing:
                # the reader has reply_write_timeout from the first write it did not take
                job.give_up = time.monotonic() + self.reply_write_timeout
                self._writing[job.fd] = job
                self._sel.register(job.fd, selectors.EVENT_WRITE, self._on_writable)
            return
        except OSError as e:
            self._finish(job, "the reader of %s went away before the reply was written (%s)"
                         % (job.path, e.strerror))
            return
        self._finish(job)

    def _on_writable(self, fd, mask):
        self._write(self._writing[fd])

    def _finish(self, job, problem=None):
        if problem:
            self.log.warning("%s: reply to %s for %r not delivered: %s", self.what, job.path,
                             job.label, problem)
        if self._writing.pop(job.fd, None) is not None:
            self._sel.unregister(job.fd)
        os.close(job.fd)
        job.fd = None
        self._done(job)

    def _drop(self, job, reason):
        self._on_drop()
        self.log.warning("%s: dropped request %r (reply to %s): %s", self.what, job.label,
                         job.path, reason)
        self._opening.pop(job, None)
        self._done(job)

    def _done(self, job):
        """The job is over: the next one for the same reply FIFO may start."""
        queue = self._queues.get(job.path)
        if not queue or queue[0] is not job:
            return
        queue.popleft()
        if not queue:
            del self._queues[job.path]
        elif not self._closing:     # closing: close() drops (and counts) the rest
            self._begin(queue[0], time.monotonic())


class FifoServer:
    """A FIFO server's loop: `open()`, `serve(stop_event)`, `close()`.

    A subclass sets `what` (its name in log lines) and `log`, builds `self.fifo` (a
    WatchedFifo) and `self.reader`, calls `FifoServer.__init__` with the timeouts, and
    implements `on_event(event)`, which mostly calls `self.jobs.submit`.
    """

    READ_SIZE = 65536
    READS_PER_TURN = 4
    EVENTS_PER_TURN = 256

    def __init__(self, *, request_idle_timeout=REQUEST_IDLE_TIMEOUT,
                 reply_open_wait=REPLY_OPEN_WAIT, reply_write_timeout=REPLY_WRITE_TIMEOUT,
                 on_drop=None):
        self.request_idle_timeout = request_idle_timeout
        self.jobs = ReplyJobs(self.what, self.log, reply_open_wait=reply_open_wait,
                              reply_write_timeout=reply_write_timeout, on_drop=on_drop)
        self.limited = self.jobs.log    # one rate limit for every line a client can cause
        self._sel = None
        self._last_data = 0.0
        self._backlog = False       # the reader holds events not handed out yet

    @property
    def watch(self):
        """How a deleted FIFO is noticed: "inotify" or "stat" (None before open())."""
        return self.fifo.watch

    def open_fifo(self):
        """Create the server FIFO and start the jobs. Raises what WatchedFifo.open raises
        (the subclass's open() says which server and path)."""
        self._sel = selectors.DefaultSelector()
        self.jobs.open(self._sel)
        try:
            self.fifo.open(self._sel, self._on_request_bytes)
        except BaseException:
            self.close()
            raise

    def close(self):
        """Stop serving: finish slow commands, close everything, remove the FIFO."""
        self.jobs.close()
        if self._sel is not None:
            self.fifo.close()
            self._sel.close()
            self._sel = None

    def serve(self, stop_event):
        """Answer requests until stop_event is set (checked at least every POLL_INTERVAL)."""
        serve_until(stop_event, self.serve_once, self.log)

    def serve_once(self, timeout):
        """One loop turn: wait up to `timeout` s for IO, handle it, run the timers."""
        if self._backlog:
            self._take_events()     # the events left over from the last turn first
        wait = 0.0 if self._backlog else self.jobs.next_timeout(timeout)
        self.jobs.start_slow()
        for key, mask in self._sel.select(wait):
            key.data(key.fd, mask)
        now = time.monotonic()
        self.jobs.tick(now)
        if self.reader.pending and now - self._last_data > self.request_idle_timeout:
            self.reader.abandon("unfinished request abandoned after %.1f s without data"
                                % self.request_idle_timeout)
            self._take_events()
        self.fifo.tick(now)

    def _on_request_bytes(self, fd, mask):
        # each chunk goes to the reader as it was read, and its events are taken before
        # the next read: both readers treat the start of a write as a resync point
        for _ in range(self.READS_PER_TURN):
            if self._backlog:
                return              # hand out what is parsed before reading more
            try:
                data = os.read(fd, self.READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                return
            self._last_data = time.monotonic()
            self.reader.receive_data(data)
            self._take_events()
            if len(data) < self.READ_SIZE:
                return              # the pipe is empty: no read just to hear EAGAIN

    def _take_events(self):
        for _ in range(self.EVENTS_PER_TURN):
            event = self.reader.next_event()
            if event is NEED_DATA:
                self._backlog = False
                return
            self.on_event(event)
        self._backlog = True
