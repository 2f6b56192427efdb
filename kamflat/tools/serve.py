"""`kamflat serve -f FILE [-A NAME[=VALUE]]...`: run the server in the foreground.

This module turns a loaded Config into the few settings the processes need, so
nothing below it reads config params by name.
"""
import argparse
import logging
import os
import sys

from kamflat import __version__

log = logging.getLogger("kamflat")


class Settings:
    """What `kamflat serve` adds to the config's resolved Model (`.model`, which the
    processes read for everything the config says): the log options, the writers'
    ranks, the SIP handler, the process descriptions."""

    def __init__(self, model):
        self.model = model
        self.log_options = (None, 0)     # serve's --log-level and -d count
        self.ranks = list(range(1, model.children + 1))
        # The ingest socket's path, None without one (model.ingest_socket is its Place).
        self.ingest_socket = model.ingest_socket.path if model.ingest_socket else None
        # Built once here; every writer gets a copy at fork.
        self.sip = model.sip_handler()
        if model.mi_fifo:
            self.management_desc = "MI FIFO"
        elif model.jsonrpc_fifo:
            self.management_desc = "JSONRPCS FIFO"
        elif model.ctl:
            self.management_desc = "ctl handler"
        else:
            self.management_desc = "management"

    def share_core_values(self, state, log_level_name=None, more_debug=0):
        """Put Kamailio's core debug value in the shared pages (state: server/shm.py) and
        make every process's logging follow it, so MI `debug N` and RPC
        `cfg.set_now_int core debug N` change the log level of all, as in Kamailio.

        debug= (plus one per -d) is the start value; --log-level, when given, wins and
        gives the debug value of its level. With neither, kamflat logs at INFO and the
        debug value is Kamailio's default 0 until a command sets one."""
        from kamflat.config.model import DEBUG_OF_LEVEL
        if log_level_name:
            state.debug.set(DEBUG_OF_LEVEL[log_level_name])
            state.debug_given.set(1)
        else:
            state.debug.set(self.model.debug + more_debug)
            state.debug_given.set(int(self.model.debug_set or more_debug > 0))
        root = logging.getLogger()
        fallback = root.level
        root.setLevel(logging.DEBUG)
        for handler in root.handlers:
            handler.addFilter(_DebugFilter(state, fallback))
        return SharedDebug(state)

    def writer_desc(self, child):
        if self.model.listen:
            return "udp receiver child=%d sock=%s" % (child, self.sip_socket_names())
        return "writer child=%d" % child

    def sip_socket_names(self):
        return " ".join(entry.name for entry in self.model.listen)

    def open_sip_sockets(self):
        if not self.model.listen:
            return []
        from kamflat.server import sipnet
        return sipnet.open_listen_sockets([entry.spec for entry in self.model.listen])

    def dirs_to_create(self):
        """Directories kamflat makes at start (Kamailio would refuse to start instead)."""
        paths = [self.model.db_dir]
        if self.ingest_socket:
            paths.append(os.path.dirname(self.ingest_socket))
        return [p for p in paths if p]

    def summary(self):
        m = self.model
        return "children=%d dir=%s flush=%d ingest=%s listen=%s" % (
            m.children, m.db_dir, m.flush, self.ingest_socket or "-",
            ",".join(entry.spec for entry in m.listen) or "-")


class _DebugFilter(logging.Filter):
    """Lets a record through by the shared debug value (Kamailio's level mapping)."""

    def __init__(self, state, fallback):
        super().__init__()
        self.state, self.fallback = state, fallback

    def filter(self, record):
        from kamflat.config.model import log_level
        if self.state.debug_given.get():
            return record.levelno >= log_level(self.state.debug.get())
        return record.levelno >= self.fallback


class SharedDebug:
    """Management's debug value in serve: the shared one; setting it makes it count."""

    def __init__(self, state):
        self.state = state

    def get(self):
        return self.state.debug.get()

    def set(self, level):
        self.state.debug.set(level)
        self.state.debug_given.set(1)


def load(path, defines=()):
    """Settings of the config at `path`; raises ConfigError (FILE:LINE: message).

    The one way serve and check read a config, so check refuses what serve refuses."""
    from kamflat.config.model import load_model
    return Settings(load_model(path, defines))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="kamflat serve",
                                     description="Run kamflat in the foreground.")
    parser.add_argument("-f", dest="config", required=True, metavar="FILE",
                        help="Kamailio-style config file")
    parser.add_argument("-A", dest="defines", action="append", default=[],
                        metavar="NAME[=VALUE]", help="preprocessor define, as kamailio -A")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="wins over the config's debug= (default: by debug=, else INFO)")
    parser.add_argument("-d", dest="more_debug", action="count", default=0,
                        help="one more debug level per -d, as kamailio -d")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    logging.addLevelName(25, "NOTICE")          # Kamailio's L_NOTICE (debug=1)
    logging.basicConfig(stream=sys.stderr, level=args.log_level or "INFO",
                        format="%(asctime)s kamflat[%(process)d] %(levelname)s: %(message)s")
    from kamflat.config.cfg import ConfigError
    try:
        settings = load(args.config, defines=args.defines)
    except ConfigError as exc:
        print("kamflat: %s" % exc, file=sys.stderr)
        return 1
    from kamflat.server.paths import PathInUse, check_free
    try:
        check_free(settings.model.places())     # another server's FIFO or socket: stop
    except PathInUse as exc:
        print("kamflat: cannot start: %s" % exc, file=sys.stderr)
        return 1
    for notice in settings.model.config.warnings:
        log.warning("%s", notice)
    for path in settings.dirs_to_create():
        if not os.path.isdir(path):
            try:
                os.makedirs(path)
            except OSError as exc:
                print("kamflat: cannot create directory %s: %s" % (path, exc.strerror),
                      file=sys.stderr)
                return 1
            log.info("created directory %s", path)
    log.info("kamflat %s starting with %s", __version__, args.config)
    from kamflat.server.arbiter import Arbiter
    try:
        settings.log_options = (args.log_level, args.more_debug)
        return Arbiter(settings, [sys.argv[0], "serve", *argv]).run()
    except ValueError as exc:     # a socket that cannot be made: nothing was started
        print("kamflat: cannot start: %s" % exc, file=sys.stderr)
        return 1
