"""The `kamflat` command: one sub-command per entry of COMMANDS.

Each sub-command is a function `f(argv) -> int` named "module:function"; this file only
dispatches, so adding a command is one line in COMMANDS.
"""
import importlib
import sys

# name -> ("module:function", one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "serve": ("kamflat.tools.serve:main", "run the server in the foreground (-f FILE)"),
    "send": ("kamflat.tools.send:main", "feed JSON-line records to a running server"),
    "check": ("kamflat.tools.check:main", "read a Kamailio config and say what kamflat would run"),
    "fifo": ("kamflat.tools.fifo:main", "send one classic MI command over the MI FIFO (like kamctl fifo)"),
    "rpc": ("kamflat.tools.rpc:main", "JSON-RPC client for the jsonrpcs FIFO (like kamctl rpc)"),
    "cat": ("kamflat.tools.cat:cat_main", "print a table's records merged across its per-process files"),
    "follow": ("kamflat.tools.cat:follow_main", "print a table's records as they are written, across rotations"),
    "logrotate": ("kamflat.tools.logrotate:main", "print a logrotate policy for a config's acc files"),
    "gen": ("kamflat.tools.gen:main", "generate realistic acc records (to a server, a file or stdout)"),
}


def usage():
    lines = ["usage: kamflat COMMAND [ARGS...]", "", "commands:"]
    for name, (_module, help_text) in COMMANDS.items():
        lines.append("  %-8s %s" % (name, help_text))
    lines.append("")
    lines.append("`kamflat COMMAND --help` describes a command; `kamflat -v` the version.")
    return "\n".join(lines)


def version_text():
    """What `kamflat -v` prints, laid out as `kamailio -v` prints its build."""
    import platform
    from kamflat import __version__
    return ("version: kamflat %s (%s/%s) \n"
            "flags: STATS: On\n"
            "python: %s (%s)\n"
            "emulates: Kamailio 3.3 MI FIFO (mi_fifo), 5.6 JSON-RPC FIFO (jsonrpcs) and binrpc "
            "(ctl), db_flatstore acc files\n"
            % (__version__, platform.machine() or "x86_64", sys.platform,
               platform.python_version(), sys.executable))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-v", "-V", "--version"):    # kamailio -v and -V print the build
        sys.stdout.write(version_text())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print("kamflat: unknown command %r\n\n%s" % (name, usage()), file=sys.stderr)
        return 2
    module_name, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module_name), function)(rest)
