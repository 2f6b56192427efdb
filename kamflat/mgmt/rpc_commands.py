"""The RPC methods of Kamailio 5.6 that kamflat answers, over any RPC transport.

Both the JSON-RPC FIFO and the binrpc ctl socket call `RpcCommands.call(name, params)`.
A method returns a `Reply`: the values Kamailio's handler would `rpc->add` in order,
plus its RET_ARRAY flag. The transports format that themselves, which is where they
differ: jsonrpcs shows only the last value of a non-array method (and `{}` / `[]` when
nothing was added) while binrpc sends every value as its own record.

Parameter conversion also differs per transport (`Params`): jsonrpcs sees every number
as a double (`core.echo 2.5` gives "2"), binrpc has real ints and fixed-point doubles.
"""
import os
import platform
import sys
import time
from dataclasses import dataclass, replace

from kamflat.mgmt.manage import select_statistics, stat_line

# What core.version says. kamflat answers as the Kamailio release it emulates, so
# tools that parse the version string see what they would see against Kamailio.
SERVER_VERSION = "kamailio 5.6.3 (%s/%s) " % (platform.machine() or "x86_64", sys.platform)


# Process table names that Kamailio 5.x changed. Management.processes() gives the
# names MI `ps` prints (Kamailio 3.3: rank 0 is "attendant"); core.ps, core.psx and
# core.psa print 5.6's. Any other name is the same in both.
RPC_PROCESS_NAMES = {"attendant": "main process - attendant"}

class RpcFault(Exception):
    """An RPC error reply: rpc->fault(code, message)."""

    def __init__(self, code, message):
        super().__init__("%d %s" % (code, message))
        self.code = code
        self.message = message


class Struct(list):
    """A struct whose member names may repeat (pv.shvGet's "shv" items): a list of
    (name, value) pairs. Plain dicts serve every other struct."""

    struct_pairs = True     # what the JSON and binrpc encoders look for


@dataclass
class Reply:
    values: list
    array: bool = False

    def json_result(self):
        """The `result` member jsonrpcs builds from the added values."""
        if not self.values:
            return [] if self.array else {}
        return list(self.values) if self.array else self.values[-1]


class Params:
    """The request's parameters, read in order like rpc->scan.

    `kind` is "json" (every number is a double, as srjson parses it) or "binrpc".
    A read that does not match returns None, which ends the method's scan loop.
    """

    def __init__(self, values, kind="json"):
        self._values = list(values)
        self._kind = kind
        self._read = 0
        # binrpc remembers a failed conversion; it becomes the reply if the
        # method added nothing (kamcmd core.echo 2.5)
        self.fault = None

    def __len__(self):
        return len(self._values)

    def _next(self):
        self._read += 1
        return self._values.pop(0)

    def string(self, autoconvert=False):
        """'s' (or '.s' with autoconvert): a string, or a number made one."""
        if not self._values:
            return None
        value = self._values[0]
        if isinstance(value, str):
            return self._next()
        if autoconvert and isinstance(value, int) and not isinstance(value, bool):
            self._next()
            if self._kind == "json":
                # int2str(SRJSON_GET_ULONG(node)): the double cast to unsigned long
                return str(int(float(value)) % 2 ** 64)
            return str(value)
        if autoconvert and isinstance(value, float):
            if self._kind == "binrpc":
                self.fault = (400, "error at parameter %d: expected float type but "
                              "bug -- internal error" % self._read)
            elif value == value and abs(value) != float("inf"):
                self._next()
                return str(int(value) % 2 ** 64)
        return None

    def integer(self):
        """'d': an int. jsonrpcs takes any node's number value without a type check
        (a string reads as 0, true as 1); binrpc wants an int record."""
        if not self._values:
            return None
        value = self._values[0]
        if self._kind == "binrpc":
            if isinstance(value, float) or not isinstance(value, int):
                return None
            return self._next()
        self._next()
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            return int(value)
        return 0


@dataclass(frozen=True)
class Method:
    name: str
    handler: object
    doc: str
    array: bool = False


class RpcCommands:
    """The method table, bound to one Management."""

    def __init__(self, management):
        self.management = management
        self.methods = {}
        for name, handler, doc, array in (
            ("system.listMethods", self.list_methods,
             "Lists all RPC methods supported by the server.", True),
            ("system.methodSignature", self.method_signature,
             "Returns signature of given method.", False),
            ("system.methodHelp", self.method_help,
             "Print the help string for given method.", False),
            ("core.echo", self.echo, "Returns back its parameters.", True),
            ("core.version", self.version, "Returns the version string of the server.", False),
            ("core.uptime", self.uptime, "Returns uptime of SIP server.", False),
            ("core.ps", self.ps, "Returns the description of running processes.", True),
            ("core.psx", self.psx, "Returns the detailed description of running processes.",
             True),
            ("core.psa", self.psa, "Return all the attributes of running processes.", True),
            ("core.pwd", self.pwd, "Returns the working directory of server.", True),
            ("core.arg", self.arg, "Returns the list of command line arguments used on startup.",
             True),
            ("core.kill", self.kill, "Sends the given signal to server.", False),
            ("cfg.get", self.cfg_get, "Get the value of a configuration variable", False),
            ("cfg.seti", self.cfg_seti,
             "Set the value of a configuration variable and commit the change immediately",
             False),
            ("cfg.set_now_int", self.cfg_seti,
             "Set the value of a configuration variable and commit the change immediately",
             False),
            ("stats.get_statistics", self.get_statistics, "get core and modules stats", True),
            ("stats.reset_statistics", self.reset_statistics,
             "reset core and modules stats (silent operation)", False),
            ("stats.clear_statistics", self.clear_statistics,
             "clear core and modules stats (verbose operation)", False),
            ("pv.shvSet", self.shv_set, "Set a shared variable (args: name type value)", False),
            ("pv.shvGet", self.shv_get, "Get the value of a shared variable. If no argument, "
             "dumps all", False),
            ("flatstore.rotate", self.rotate,
             "Close and reopen flatrotate files during log rotation.", False),
            ("flatstore.k_rotate", self.rotate,
             "Close and reopen flatrotate files during log rotation.", False),
        ):
            self.methods[name] = Method(name, handler, doc, array)

    def lookup(self, name):
        return self.methods.get(name)

    def call(self, method, params):
        """Run `method` (a Method) with `params` (a Params). Returns a Reply or
        raises RpcFault."""
        values = list(method.handler(params) or ())
        if not values and params.fault:
            raise RpcFault(*params.fault)
        return Reply(values, method.array)

    # -- system

    def list_methods(self, params):
        # core_cmd.c system_listMethods walks rpc_sarray, which rpc_lookup.c keeps
        # sorted by name
        return sorted(self.methods)

    def method_signature(self, params):
        raise RpcFault(500, "Not Implemented Yet")

    def method_help(self, params):
        name = params.string()
        if name is None:
            raise RpcFault(400, "Method Name Expected")
        method = self.lookup(name)
        if method is None:
            raise RpcFault(400, "command not found")
        return [method.doc or "undocumented"]

    # -- core

    def echo(self, params):
        out = []
        while True:
            value = params.string(autoconvert=True)
            if value is None:
                return out
            out.append(value)

    def version(self, params):
        return [SERVER_VERSION]

    def uptime(self, params):
        now = int(time.time())
        started = int(self.management.started)
        return [{"now": time.ctime(now), "up_since": time.ctime(started),
                 "uptime": now - started}]

    def _processes(self):
        """The process table with Kamailio 5.6's names (RPC_PROCESS_NAMES)."""
        return [replace(p, desc=RPC_PROCESS_NAMES.get(p.desc, p.desc))
                for p in self.management.processes()]

    def ps(self, params):
        out = []
        for p in self._processes():
            out += [p.pid, p.desc]
        return out

    def psx(self, params):
        return [{"IDX": p.idx, "PID": p.pid, "DSC": p.desc} for p in self._processes()]

    def psa(self, params):
        return [{"index": p.idx, "pid": p.pid, "status": 1, "rank": p.rank,
                 "description": p.desc} for p in self._processes()]

    def pwd(self, params):
        return [os.getcwd()]

    def arg(self, params):
        return list(self.management.argv)

    def kill(self, params):
        # Kamailio replies first, then signals itself; the transports send the
        # reply before Management.stop() takes effect (it only asks for a stop).
        self.management.stop()
        return []

    def cfg_get(self, params):
        group, name = params.string(), params.string()
        if (group, name) != ("core", "debug"):
            raise RpcFault(400, "Failed to get the variable")
        return [self.management.debug]

    def cfg_seti(self, params):
        group, name = params.string(), params.string()
        value = params.integer()
        if (group, name) != ("core", "debug") or value is None:
            raise RpcFault(400, "Failed to set the variable")
        self.management.debug = value
        return []

    # -- kex statistics

    def _specs(self, params, missing="Please provide which stats to retrieve"):
        first = params.string()
        if first is None:
            raise RpcFault(400, missing)
        specs = [first]
        while (spec := params.string()) is not None:
            specs.append(spec)
        return specs

    def get_statistics(self, params):
        stats = self.management.statistics.snapshot()
        return [stat_line(s) for spec in self._specs(params)
                for s in select_statistics(stats, spec)]

    def reset_statistics(self, params):
        self._reset(params)
        return []

    def clear_statistics(self, params):
        return self._reset(params)

    def _reset(self, params):
        statistics = self.management.statistics
        lines = []
        for spec in self._specs(params, "Please provide stats name"):
            for stat in select_statistics(statistics.snapshot(), spec):
                statistics.reset(stat.group, stat.name)
                lines.append(stat_line(replace(stat, value=0), old=stat.value))
        return lines

    # -- pv shared variables

    def shv_set(self, params):
        name, kind = params.string(), params.string()
        if name is None or kind is None:
            raise RpcFault(500, "Missing parameter (Parameters: varname type value)")
        if kind == "int":
            value = params.integer()
            if value is None:
                raise RpcFault(500, "Missing integer parameter value "
                               "(Parameters: varname type value)")
        elif kind == "str":
            value = params.string()
            if value is None:
                raise RpcFault(500, "Missing parameter value (Parameters: varname type value)")
        else:
            raise RpcFault(500, "Unknown parameter type (Types: int or str)")
        if name not in self.management.shv:       # pv.shvSet only changes existing ones
            raise RpcFault(404, "Variable not found")
        self.management.shv[name] = value
        return ["Ok. Variable set to new value."]

    def shv_get(self, params):
        shv = self.management.shv

        def item(n):
            return {"name": n, "type": "string" if isinstance(shv[n], str) else "int",
                    "value": shv[n]}
        name = params.string()
        if name is None:
            return [{"items": Struct(("shv", item(n)) for n, _ in self.management.shv_listing())}]
        if name not in shv:
            raise RpcFault(404, "Variable not found")
        return [item(name)]

    # -- db_flatstore

    def rotate(self, params):
        return rotation_values(self.management.rotate())

    def rotation_reply(self, method, errors):
        """`method`'s reply (a rotation method) to a rotation with these errors, which
        the JSON-RPC FIFO server made itself (manage.SLOW). Raises RpcFault."""
        return Reply(rotation_values(errors), method.array)


def rotation_values(errors):
    if errors:
        raise RpcFault(500, "rotation incomplete: " + "; ".join(map(str, errors)))
    return []
