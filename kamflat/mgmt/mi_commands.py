"""The classic MI commands of kex, pv and db_flatstore, answered as Kamailio 3.3 does.

Each command is a function `(management, args) -> Reply` where args are the
request's `mi.Arg(name, value)` lines. `MICommands` picks the ones the loaded
modules provide, in Kamailio's registration order (what `which` prints).
"""
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, replace

from kamflat import __version__
from kamflat.mgmt.manage import select_statistics, stat_line
from kamflat.mgmt.statistics import as_kamailio_33
from kamflat.proto.mi import Node

log = logging.getLogger("kamflat.proto.mi")

# Commands per module, in each module's own registration order.
MODULE_COMMANDS = {
    "kex": ("uptime", "version", "pwd", "arg", "which", "kill", "ps", "debug",
            "get_statistics", "reset_statistics", "clear_statistics"),
    "pv": ("shv_get", "shv_set"),
    "db_flatstore": ("flat_rotate",),
}
# kex and pv register their MI commands when they are loaded (mod_register), the
# others in mod_init, which runs after every module is loaded: so a 3.3 server with
# db_flatstore loaded before kex still lists flat_rotate after shv_set.
REGISTER_AT_LOAD = ("kex", "pv")

# Commands Kamailio marks MI_NO_INPUT: their args are read and thrown away.
NO_INPUT = frozenset(("uptime", "version", "pwd", "arg", "which", "kill", "ps", "flat_rotate"))

MISSING_PARAMS = "Too few or too many arguments"


@dataclass(frozen=True)
class Reply:
    code: int
    reason: str
    nodes: tuple = ()


OK = Reply(200, "OK")


@dataclass(frozen=True)
class CloseThen:
    """No reply at all: close the reply FIFO with 0 bytes, then call `action` (MI kill)."""
    action: object


def parse_sint(value):
    """Kamailio's str2sint: optional sign then digits; None if it is not that."""
    digits = value[1:] if value[:1] in ("+", "-") else value
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(value)


# -- kex ----------------------------------------------------------------------

def cmd_uptime(m, args):
    now = time.time()
    return Reply(200, "OK", (Node("Now", time.ctime(now)),
                             Node("Up since", time.ctime(m.started)),
                             Node("Up time", "%d [sec]" % int(now - m.started))))


def cmd_version(m, args):
    # Build ends in a newline, as Kamailio's BUILD_STR does: the reply has an
    # empty line in the middle, which clients already cope with.
    return Reply(200, "OK", (
        Node("Server", "kamflat (%s (%s/%s))" % (__version__, platform.machine(), sys.platform)),
        Node("Build", "kamflat %s on Python %s\n" % (__version__, platform.python_version())),
        Node("Flags", "STATS: On"),
        Node("GIT", "unknown"),
    ))


def cmd_pwd(m, args):
    return Reply(200, "OK", (Node("WD", os.getcwd()),))


def cmd_arg(m, args):
    return Reply(200, "OK", tuple(Node(value=a) for a in m.argv))


def cmd_kill(m, args):
    return CloseThen(m.stop)


def cmd_ps(m, args):
    return Reply(200, "OK", tuple(
        Node("Process", attrs=(("ID", p.idx), ("PID", p.pid), ("Type", p.desc)))
        for p in m.processes()))


def cmd_debug(m, args):
    if args:
        level = parse_sint(args[0].value)
        if level is None:
            return Reply(400, "Bad parameter")
        m.debug = level
        log.info("core.debug has been changed to %d", level)
    return Reply(200, "OK", (Node("DEBUG", str(m.debug)),))


def cmd_get_statistics(m, args):
    if not args:
        return Reply(400, MISSING_PARAMS)
    stats = as_kamailio_33(m.statistics.snapshot())
    nodes = [Node(value=stat_line(s))
             for a in args if a.value for s in select_statistics(stats, a.value)]
    return Reply(200, "OK", tuple(nodes)) if nodes else Reply(404, "Statistics Not Found")


def cmd_reset_statistics(m, args):
    if not args:
        return Reply(400, MISSING_PARAMS)
    stats = as_kamailio_33(m.statistics.snapshot())
    found = False
    for a in args:
        # only plain names: `core:` and `group:name` are not found, as in 3.3
        for s in [s for s in stats if s.name == a.value][:1]:
            found = m.statistics.reset(s.group, s.name) or found
    return OK if found else Reply(404, "Statistics Not Found")


def cmd_clear_statistics(m, args):
    """Reset and show: `group:name = new (old)`, or `= value` when it did not change."""
    if not args:
        return Reply(400, MISSING_PARAMS)
    stats = as_kamailio_33(m.statistics.snapshot())
    nodes = []
    for a in args:
        if not a.value:
            continue
        for s in select_statistics(stats, a.value):
            new = 0 if m.statistics.reset(s.group, s.name) else s.value
            nodes.append(Node(value=stat_line(replace(s, value=new), old=s.value)))
    return Reply(200, "OK", tuple(nodes)) if nodes else Reply(404, "Statistics Not Found")


# -- pv -------------------------------------------------------------------------

def shv_node(name, value):
    kind = "integer" if isinstance(value, int) else "string"
    return Node("VAR", name, (("type", kind), ("value", value)))


def cmd_shv_get(m, args):
    if not args:
        return Reply(200, "OK", tuple(shv_node(n, v) for n, v in m.shv_listing()))
    name = args[0].value
    if not name:
        return Reply(500, "bad shv name")
    if name not in m.shv:
        return Reply(404, "Not found")
    return Reply(200, "OK", (shv_node(name, m.shv[name]),))


def cmd_shv_set(m, args):
    if len(args) < 3:
        return Reply(400, MISSING_PARAMS)
    name, kind, value = (a.value for a in args[:3])
    if not name:
        return Reply(500, "bad shv name")
    if name not in m.shv:
        return Reply(404, "Not found")
    if kind[:1] in ("s", "S"):
        m.shv[name] = value
        return OK
    number = parse_sint(value)
    if number is None:
        log.error("shv_set %s: bad integer value %r", name, value)
        return Reply(500, "bad integer value")
    m.shv[name] = number
    return OK


# -- db_flatstore -------------------------------------------------------------------

def cmd_flat_rotate(m, args):
    """200 only once every writer has closed its files; otherwise say what failed."""
    return flat_rotate_reply(m.rotate())


def flat_rotate_reply(errors):
    """flat_rotate's reply to a rotation with these errors (the MI FIFO server makes
    the rotation itself: manage.SLOW)."""
    if not errors:
        return OK
    log.error("flat_rotate incomplete: %s", "; ".join(errors))
    return Reply(500, "Rotation incomplete", tuple(Node(value=e) for e in errors))


COMMANDS = {
    "uptime": cmd_uptime, "version": cmd_version, "pwd": cmd_pwd, "arg": cmd_arg,
    "kill": cmd_kill, "ps": cmd_ps, "debug": cmd_debug,
    "get_statistics": cmd_get_statistics, "reset_statistics": cmd_reset_statistics,
    "clear_statistics": cmd_clear_statistics,
    "shv_get": cmd_shv_get, "shv_set": cmd_shv_set,
    "flat_rotate": cmd_flat_rotate,
}

class MICommands:
    """The MI commands of the loaded modules, bound to one Management."""

    def __init__(self, modules, management):
        loaded = list(dict.fromkeys(modules))
        order = [m for m in loaded if m in REGISTER_AT_LOAD] + \
                [m for m in loaded if m in MODULE_COMMANDS and m not in REGISTER_AT_LOAD]
        self.names = [cmd for module in order for cmd in MODULE_COMMANDS[module]]
        self.no_input = NO_INPUT.intersection(self.names)
        self.management = management

    def __contains__(self, name):
        return name in self.names

    def run(self, command, args=()):
        """Run one command; returns a Reply or CloseThen. Unknown names raise KeyError."""
        if command not in self.names:
            raise KeyError(command)
        if command == "which":
            return Reply(200, "OK", tuple(Node(value=n) for n in self.names))
        return COMMANDS[command](self.management, list(args))
