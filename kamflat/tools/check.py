"""`kamflat check -f FILE [-A NAME[=VALUE]]...`: does kamflat accept this config?

Exit 0: warnings and the notice of what was parsed past go to stderr, a one-line
summary of what kamflat would run goes to stdout. Exit 1: the error, as
`FILE:LINE: message`, is the one line on stderr.
"""
import argparse
import sys

from kamflat.config.cfg import ConfigError


def summary(model):
    """One line: children, db dir, MI FIFO, JSON-RPC FIFO, ctl socket(s), ingest, flush."""
    fields = [
        ("children", model.children),
        ("db_dir", model.db_dir),
        ("mi_fifo", model.mi_fifo and model.mi_fifo.path),
        ("jsonrpc_fifo", model.jsonrpc_fifo and model.jsonrpc_fifo.path),
        ("ctl", ",".join(c.address for c in model.ctl)),
        ("ingest_socket", model.ingest_socket and model.ingest_socket.path),
        ("flush", int(model.flush) if "db_flatstore" in model.modules else None),
    ]
    return " ".join("%s=%s" % (name, "-" if value in (None, "") else value)
                    for name, value in fields)


def main(argv):
    parser = argparse.ArgumentParser(
        prog="kamflat check",
        description="Read a Kamailio config as kamflat would and say what it would run.")
    parser.add_argument("-f", dest="file", required=True, help="the config file")
    parser.add_argument("-A", dest="defines", action="append", default=[],
                        metavar="NAME[=VALUE]", help="#!define NAME before reading (repeatable)")
    args = parser.parse_args(argv)
    from kamflat.tools.serve import load      # the same reading as `kamflat serve`
    try:
        settings = load(args.file, args.defines)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    config = settings.model.config
    for warning in config.warnings:
        print("kamflat: warning: %s" % warning, file=sys.stderr)
    notice = config.notice()
    if notice:
        print("kamflat: notice: %s" % notice, file=sys.stderr)
    print(summary(settings.model))
    return 0
