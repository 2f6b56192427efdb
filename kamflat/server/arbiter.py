"""The master process: forks the writers, the ingest and the management process,
restarts what dies, and stops everything in an order that loses nothing.

Everything the children share is made here before the first fork: the shared
statistics and process table, the writers' data and control socket pairs, the
ingest socket and the SIP sockets. A restarted child inherits
the same objects, so a writer that comes back has the same rank, the same files
and the same sockets.

Stopping order (SIGTERM/SIGINT): the ingest process and the writers together (the
ingest takes what senders already sent, hands it to the writers, says `stop`, and
tells each sender exactly what was written; the writers write everything handed to
them, giving up after a grace on what cannot be written), then the management
process (it removes its FIFOs and sockets).
"""
import logging
import os
import select
import signal
import socket
import stat
import time

from kamflat.flatstore import connection as flatstore
from kamflat.mgmt.statistics import startup_statistics
from kamflat.server import child as childproc
from kamflat.server.shm import SharedState
from kamflat.server.linksock import seqpacket_pair
from kamflat.server.writer import Writer

log = logging.getLogger("kamflat")

STOP_TIMEOUT = 20.0        # per stage, beyond its graces; a child still alive then is killed
RESTART_WINDOW = 10.0      # restarts within this many seconds count as a crash loop
RESTART_LIMIT = 10         # ... and past this many, wait before each new restart
INGEST_EXTRA_GRACE = 5.0   # the ingest waits this much longer than the writers' stop_grace
INGEST_RANK = -3
MANAGEMENT_RANK = -2


class Child:
    def __init__(self, idx, rank, desc, target):
        self.idx, self.rank, self.desc, self.target = idx, rank, desc, target
        self.pid = 0
        self.restarts = []


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP)

    def __init__(self, settings, argv):
        self.settings = settings
        self.argv = list(argv)
        self.children = []
        self.signal_queue = []
        self.stopping = False
        self.exit_code = 0

    # -- building the shared objects ------------------------------------------------
    def setup(self):
        s = self.settings
        self.started = time.time()
        self.state = SharedState()
        self.debug = s.share_core_values(self.state, *s.log_options)   # core debug, shared
        for group, name in startup_statistics(s.model):   # listed at 0 from the start
            self.state.register(group, name)
        self.state.set_process(0, os.getpid(), 0, "attendant")
        self.udp_socks = s.open_sip_sockets()
        self.listener = None
        if s.ingest_socket:
            self.listener = _listen_unix(s.ingest_socket)
            st = os.lstat(s.ingest_socket)
            self.listener_ident = (st.st_dev, st.st_ino)   # the ingest removes only this one
        data_pairs = {rank: seqpacket_pair() for rank in s.ranks}
        control_pairs = {rank: seqpacket_pair(1 << 16) for rank in s.ranks}
        for rank in s.ranks:
            self.children.append(Child(rank, rank, s.writer_desc(rank - 1), self.writer_target(
                rank, data_pairs[rank][1], control_pairs[rank][1])))
        idx = len(s.ranks) + 1
        if self.listener is not None:
            writers = [data_pairs[r][0] for r in s.ranks]
            self.children.append(Child(idx, INGEST_RANK, "ingest", self.ingest_target(writers)))
            idx += 1
        controls = {r: control_pairs[r][0] for r in s.ranks}
        self.ready_r, self.ready_w = os.pipe()
        self.management = Child(idx, MANAGEMENT_RANK, s.management_desc,
                                self.management_target(controls))
        self.children.append(self.management)

    def writer_target(self, rank, data_sock, control_sock):
        def run():
            s = self.settings
            m = self.settings.model
            conn = flatstore.connect(
                m.db_url, rank=rank, flush=m.flush, encode_delimiter=m.encode_delimiter,
                encode_newlines=m.encode_newlines,
                written_cell=lambda table: self.state.cell("flatstore", table + "_written"),
                journal=self.state.journal())
            return Writer(rank, conn, self.state, grace=m.stop_grace, control_sock=control_sock,
                          data_sock=data_sock if self.listener is not None else None,
                          udp_socks=self.udp_socks, sip_handler=s.sip).run()
        return run

    def ingest_target(self, writer_socks):
        def run():
            from kamflat.server.ingest import Ingest
            return Ingest(self.listener, writer_socks, self.state,
                          grace=ingest_grace(self.settings.model.stop_grace),
                          max_connections=self.settings.model.ingest_max_connections,
                          idle_timeout=self.settings.model.ingest_idle_timeout,
                          path=self.settings.ingest_socket, ident=self.listener_ident).run()
        return run

    def management_target(self, control_socks):
        def run():
            from kamflat.server import mgmtproc
            from kamflat.mgmt.manage import Management
            from kamflat.server.rotation import Rotator
            rotator = Rotator(control_socks, self.settings.model.rotate_timeout,
                              self.state)
            master = os.getppid()
            management = Management(
                argv=self.argv, processes=self.state.processes, rotate=rotator.rotate,
                begin_rotation=lambda: rotator.begin(blocking=False),
                statistics=self.state, stop=lambda: os.kill(master, signal.SIGTERM),
                started=self.started, debug=self.debug)
            management.shv.update(self.settings.model.shv)   # pv's shvset initial values
            return mgmtproc.run(self.settings, management, self.ready_w)
        return run

    # -- running ----------------------------------------------------------------
    def run(self):
        """Run until stopped; the exit status. A socket that cannot be made raises
        ValueError naming it, before anything is forked."""
        self.pid = os.getpid()
        self.setup()
        for sig in self.SIGNALS:
            signal.signal(sig, self.queue_signal)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for child in self.children:
            self.spawn(child)
        if not self.wait_ready():
            self.exit_code = 1
            self.stop()
            return self.exit_code
        log.info("kamflat ready: %s", self.settings.summary())
        while not self.stopping:
            select.select([wake_r], [], [], 1.0)
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            queued, self.signal_queue = self.signal_queue, []
            for sig in queued:
                getattr(self, "handle_" + signal.Signals(sig).name[3:].lower())()
        self.stop()
        return self.exit_code

    def queue_signal(self, signum, frame):
        # No logging here: just queue it; the loop handles it.
        if len(self.signal_queue) < 10:
            self.signal_queue.append(signum)

    def wait_ready(self):
        """The management process says `ok` once its FIFOs/sockets exist, or why not."""
        ready, _, _ = select.select([self.ready_r], [], [], 30.0)
        answer = os.read(self.ready_r, 4096).decode(errors="replace") if ready else ""
        if answer.startswith("ok"):
            return True
        log.error("kamflat could not start: %s", answer.strip() or "management process timed out")
        return False

    def spawn(self, child):
        pid = os.fork()
        if pid:
            child.pid = pid
            self.state.set_process(child.idx, pid, child.rank, child.desc)
            return
        # In the child: never return into the master's code.
        code = childproc.EXIT_FAILED
        try:
            childproc.become_child(self.pid, self.SIGNALS)
            self.state.slot = child.idx
            code = childproc.exit_code(child.target, child.desc)
        finally:
            logging.shutdown()
            os._exit(code)

    def handle_chld(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue
            child.pid = 0
            if self.stopping:
                continue
            log.error("%s (pid %d) died (%s); restarting it with rank %d", child.desc, pid,
                      _describe_status(status), child.rank)
            self.state.add("core", "process_restarts")
            if child.rank > 0:
                self.state.add("core", "writer_restarts")
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW] + [now]
            if len(child.restarts) > RESTART_LIMIT:
                time.sleep(1.0)    # a crash loop: do not fork as fast as it dies
            self.spawn(child)

    def handle_term(self):
        self.stopping = True

    handle_int = handle_term

    def handle_hup(self):
        log.info("SIGHUP ignored: kamflat reads its config only at start (as Kamailio does)")

    # -- stopping ---------------------------------------------------------------
    def stop(self):
        self.stopping = True
        ingest = [c for c in self.children if c.rank == INGEST_RANK]
        writers = [c for c in self.children if c.rank > 0]
        for stage, timeout in zip((ingest + writers, [self.management]),
                                  stop_timeouts(self.settings.model.stop_grace)):
            failed = self.terminate(stage, timeout)
            if failed:
                # A writer that could not write everything says so and exits 1 (the
                # senders were told which lines): so does the server.
                log.error("%s did not stop cleanly", ", ".join(failed))
                self.exit_code = self.exit_code or 1
        if self.listener is not None:
            _unlink(self.settings.ingest_socket)
        log.info("kamflat stopped")

    def terminate(self, children, timeout):
        """SIGTERM `children`, reap them (SIGKILL for one still alive `timeout` seconds
        later); the descriptions of those that exited non-zero."""
        failed = []
        for child in children:
            if child.pid:
                _kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            while child.pid:
                try:
                    pid, status = os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = child.pid, 0
                if pid:
                    if status:
                        failed.append("%s (pid %d, %s)" % (child.desc, pid,
                                                           _describe_status(status)))
                    child.pid = 0
                    break
                if time.monotonic() > deadline:
                    log.error("%s (pid %d) did not stop; killing it", child.desc, child.pid)
                    _kill(child.pid, signal.SIGKILL)
                    deadline = time.monotonic() + STOP_TIMEOUT
                time.sleep(0.01)
        return failed


def stop_timeouts(stop_grace):
    """How long each stop stage (ingest and writers, then management) may take before
    its children are killed: the first outlasts the ingest's grace, which outlasts the
    writers' stop_grace, so a long stop_grace still ends in exact answers, not a kill."""
    return ingest_grace(stop_grace) + STOP_TIMEOUT, STOP_TIMEOUT


def ingest_grace(stop_grace):
    """How long the ingest's stop waits for the writers' reports."""
    return stop_grace + INGEST_EXTRA_GRACE


def _listen_unix(path):
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)   # left by a run that crashed; Kamailio replaces its FIFO alike
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ValueError("ingest_socket %s: %s" % (path, exc.strerror or exc)) from None
    return sock


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    return "exit code %d" % os.WEXITSTATUS(status)
