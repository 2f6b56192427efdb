"""What every child of the master does the same way: signals, the wake-up pipe, the
parent-death signal and exit codes (in the spirit of gunicorn's Worker.init_signals).

    class Writer(ChildProcess):
        def run(self):
            self.init_signals()            # SIGTERM sets self.stopping and wakes select()
            ...select([self.wake_r, ...])... self.drain_wakeup()

The master forks and calls `become_child(master_pid)` then `exit_code(target)` in the
child; those never return into the master's code.
"""
import ctypes
import logging
import os
import signal

log = logging.getLogger("kamflat")

EXIT_OK = 0
EXIT_FAILED = 1     # the child could not do all it should (records not written, a
                    # transport that stopped, an exception): the server's stop says so

PR_SET_PDEATHSIG = 1


class ChildProcess:
    """A child's signal handling. SIGINT is ignored (Ctrl-C reaches the whole process
    group: the master decides when children stop); SIGTERM only sets `stopping` (and
    calls on_term, if given) and, through the wake-up pipe, interrupts select()."""

    stopping = False
    wake_r = None
    on_term = None

    def init_signals(self, wakeup=True):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.handle_term)
        if wakeup:
            # The handler only sets a flag; this pipe wakes select() up to notice it.
            self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(wake_w)

    def handle_term(self, signum, frame):
        self.stopping = True
        if self.on_term is not None:
            self.on_term()

    def drain_wakeup(self):
        """Empty the wake-up pipe (it only interrupts select)."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass


def become_child(master_pid, master_signals):
    """In a newly forked child: the master's signal handlers and wake-up fd are not ours;
    and the kernel is to send us SIGTERM if the master dies (even by SIGKILL), so the
    child stops cleanly (writers flush) instead of living on without a master."""
    for sig in master_signals:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to stop with the master: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != master_pid:     # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def exit_code(target, desc):
    """Run target() and turn how it ended into the child's exit status."""
    try:
        return target() or EXIT_OK
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except BaseException:
        log.exception("%s (pid %d) failed", desc, os.getpid())
        return EXIT_FAILED
