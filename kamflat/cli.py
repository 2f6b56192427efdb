"""The `kamflat` command: one sub-command per module.

Each sub-command lives in its own module with a `main(argv) -> int`; this file only
dispatches, so adding a command is one line in COMMANDS.
"""
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "serve": ("kamflat.serve", "run the server in the foreground (-f FILE)"),
    "send": ("kamflat.send", "feed JSON-line records to a running server"),
    "check": ("kamflat.check", "read a Kamailio config and say what kamflat would run"),
    "fifo": ("kamflat.mi_client", "send one classic MI command over the MI FIFO (like kamctl fifo)"),
    "rpc": ("kamflat.rpc_client", "JSON-RPC client for the jsonrpcs FIFO (like kamctl rpc)"),
    "cat": ("kamflat.cat", "print a table's records merged across its per-process files"),
    "follow": ("kamflat.follow", "print a table's records as they are written, across rotations"),
    "gen": ("kamflat.gen", "generate realistic acc records (to a server, a file or stdout)"),
}


def usage():
    lines = ["usage: kamflat COMMAND [ARGS...]", "", "commands:"]
    for name, (_module, help_text) in COMMANDS.items():
        lines.append("  %-8s %s" % (name, help_text))
    lines.append("")
    lines.append("`kamflat COMMAND --help` describes a command.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print("kamflat: unknown command %r\n\n%s" % (name, usage()), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)
