"""`kamflat check -f FILE [-A NAME[=VALUE]]...`: does kamflat accept this config?

Exit 0: warnings and the notice of what was parsed past go to stderr, a one-line
summary of what kamflat would run goes to stdout. Exit 1: the error, as
`FILE:LINE: message`, is the one line on stderr.
"""
import argparse
import sys

from kamflat.config.cfg import ConfigError, load_config


def summary(config):
    """One line: children, db dir, MI FIFO, JSON-RPC FIFO, ctl socket(s), ingest, flush."""
    def module_param(module, name):
        return config.param(module, name) if config.has_module(module) else None

    jsonrpc_fifo = None
    transport = module_param("jsonrpcs", "transport")
    if transport is not None and (transport == 0 or transport & 2):
        jsonrpc_fifo = config.runtime_path(config.param("jsonrpcs", "fifo_name"))
    ctl = ",".join(config.param_values("ctl", "binrpc")) if config.has_module("ctl") else None
    fields = [
        ("children", config.children),
        ("db_dir", config.db_dir),
        ("mi_fifo", module_param("mi_fifo", "fifo_name")),
        ("jsonrpc_fifo", jsonrpc_fifo),
        ("ctl", ctl),
        ("ingest_socket", config.param("kamflat", "ingest_socket")),
        ("flush", module_param("db_flatstore", "flush")),
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
    try:
        config = load_config(args.file, args.defines)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for warning in config.warnings:
        print("kamflat: warning: %s" % warning, file=sys.stderr)
    notice = config.notice()
    if notice:
        print("kamflat: notice: %s" % notice, file=sys.stderr)
    print(summary(config))
    return 0
