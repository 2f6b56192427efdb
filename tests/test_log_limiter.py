"""fifoio.LogLimiter: the log lines clients can cause, rate-limited, and every line
accounted for: logged, or counted in a later "(N more like this)" line, even when a
server's helper thread logs through it while the loop ticks it."""
import logging
import re
import sys
import threading

from kamflat.server.fifoio import LogLimiter


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def accounted(lines):
    """How many log() calls the lines stand for (a "(N more like this)" line: the N
    calls held back, shown by the last of them)."""
    more = re.compile(r" \((\d+) more like this\)$")
    return sum(int(m.group(1)) if (m := more.search(line)) else 1 for line in lines)


def limiter():
    logger = logging.getLogger("kamflat.test.limiter.%d" % id(object()))
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    return LogLimiter(logger), handler


def test_a_burst_is_cut_and_counted():
    limited, handler = limiter()
    for n in range(100):
        limited.warning("bad request %d", n % 20)
    limited.tick(float("inf"))
    assert len(handler.lines) == LogLimiter.BURST + 1
    assert handler.lines[-1].endswith("(90 more like this)")
    assert accounted(handler.lines) == 100


def test_two_threads_and_the_ticks_lose_no_count():
    limited, handler = limiter()
    limited.INTERVAL = 0.0005       # intervals end all the time: releases race the logs
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)     # threads switch as often as they can
    errors = []

    def log_many(tag):
        try:
            for n in range(20000):
                limited.error("%s %d", tag, n % 50)
        except Exception as exc:    # a race in the limiter (KeyError, RuntimeError)
            errors.append(exc)

    threads = [threading.Thread(target=log_many, args=(tag,)) for tag in "ab"]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            try:
                limited.tick(float("inf"))
            except Exception as exc:
                errors.append(exc)
    finally:
        for thread in threads:
            thread.join(60)
        sys.setswitchinterval(old)
    limited.tick(float("inf"))
    assert errors == []
    assert accounted(handler.lines) == 40000
