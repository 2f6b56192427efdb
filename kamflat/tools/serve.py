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
    """What `kamflat serve` runs, read once from the config."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.db_dir = cfg.db_dir
        if not self.db_dir:
            raise ValueError("%s: no accounting directory: kamflat needs acc loaded with "
                             "modparam(\"acc\", \"db_url\", \"flatstore:/DIR\")" % cfg.path)
        self.db_url = "flatstore:" + self.db_dir
        self.children = cfg.children
        self.ranks = list(range(1, self.children + 1))
        self.flush = bool(cfg.param("db_flatstore", "flush"))
        self.encode_delimiter = bool(cfg.param("db_flatstore", "encode_delimiter"))
        self.encode_newlines = bool(cfg.param("kamflat", "encode_newlines"))
        self.rotate_timeout = cfg.param("kamflat", "rotate_timeout") / 1000.0
        self.stop_grace = cfg.param("kamflat", "stop_grace") / 1000.0
        self.ingest_max_connections = cfg.param("kamflat", "ingest_max_connections")
        self.ingest_idle_timeout = cfg.param("kamflat", "ingest_idle_timeout") / 1000.0
        self.ingest_socket = cfg.param("kamflat", "ingest_socket") or None
        self.listen = list(cfg.listen)
        self.sip = None
        if self.listen:
            # Built (and so checked) here once; every writer gets a copy at fork.
            from kamflat.acc import logic as acc
            self.sip = acc.handler_from_config(cfg)
        if cfg.has_module("mi_fifo"):
            self.management_desc = "MI FIFO"
        elif cfg.has_module("jsonrpcs"):
            self.management_desc = "JSONRPCS FIFO"
        elif cfg.has_module("ctl"):
            self.management_desc = "ctl handler"
        else:
            self.management_desc = "management"

    def writer_desc(self, child):
        if self.listen:
            return "udp receiver child=%d sock=%s" % (child, self.sip_socket_names())
        return "writer child=%d" % child

    def sip_socket_names(self):
        return " ".join(entry.split(":", 1)[1] if entry.startswith("udp:") else entry
                        for entry in self.listen)

    def open_sip_sockets(self):
        if not self.listen:
            return []
        from kamflat.server import sipnet
        return sipnet.open_listen_sockets(self.listen)

    def dirs_to_create(self):
        """Directories kamflat makes at start (Kamailio would refuse to start instead)."""
        paths = [self.db_dir]
        if self.ingest_socket:
            paths.append(os.path.dirname(self.ingest_socket))
        return [p for p in paths if p]

    def summary(self):
        return "children=%d dir=%s flush=%d ingest=%s listen=%s" % (
            self.children, self.db_dir, self.flush, self.ingest_socket or "-",
            ",".join(self.listen) or "-")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="kamflat serve",
                                     description="Run kamflat in the foreground.")
    parser.add_argument("-f", dest="config", required=True, metavar="FILE",
                        help="Kamailio-style config file")
    parser.add_argument("-A", dest="defines", action="append", default=[],
                        metavar="NAME[=VALUE]", help="preprocessor define, as kamailio -A")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s kamflat[%(process)d] %(levelname)s: %(message)s")
    from kamflat.config.cfg import ConfigError, load_config
    try:
        cfg = load_config(args.config, defines=args.defines)
        settings = Settings(cfg)
    except (ConfigError, ValueError) as exc:
        print("kamflat: %s" % exc, file=sys.stderr)
        return 1
    for notice in getattr(cfg, "warnings", []):
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
        return Arbiter(settings, [sys.argv[0], "serve", *argv]).run()
    except ValueError as exc:     # a socket that cannot be made: nothing was started
        print("kamflat: cannot start: %s" % exc, file=sys.stderr)
        return 1
