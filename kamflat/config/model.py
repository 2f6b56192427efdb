"""The one resolved model of a config: everything `kamflat serve` derives from it.

`resolve(config)` takes a parsed Config (cfg.py) and computes, once, every value a
process or a client needs: each path kamflat creates (MI FIFO, JSON-RPC FIFO, ctl
sockets, ingest socket) with Kamailio's defaults and its run_dir rule, the acc
directory and tables, the db_extra columns, the UDP listen sockets, the SIP front end's
params, the flatstore modes and the core log level. Every consumer reads this Model:
serve and its processes, check, the clients' `-f` and the pytest plugin, so a rule is
written here once and `check` refuses exactly what `serve` refuses.

Each error is a ConfigError with the FILE:LINE of the statement that set the value (or
of the loadmodule whose default it is). Nothing here opens anything: binding and
creating are the server's job (and a path in use is server/paths.py's check).

Pure: no IO (load_model reads the config file through cfg.load_config).
"""
from dataclasses import dataclass, field

from kamflat.acc import logic as acc
from kamflat.acc import pv
from kamflat.config.cfg import load_config
from kamflat.config.preproc import ConfigError

DEFAULT_PORT = 5060                  # listen= without a port
MAX_SOCKET_PATH = 107                # sun_path is 108 bytes on Linux, with its NUL
MI_FIFO_DEFAULT = "kamailio_fifo"    # mi_fifo 4.0+ without fifo_name: run_dir/kamailio_fifo
CTL_SOCKET_NAME = "kamailio_ctl"     # ctl_defaults.h DEFAULT_CTL_SOCKET_NAME
CTL_PROTOS = ("unix", "unixs", "unixd", "tcp", "udp")
LISTEN_PROTOS = ("udp", "tcp", "tls", "sctp", "ws", "wss")

# Kamailio's debug levels (core/dprint.h) -> Python logging levels; L_NOTICE sits
# between WARNING and INFO as a level of its own.
LOG_LEVELS = {-5: 50, -4: 50, -3: 50, -2: 50, -1: 40, 0: 30, 1: 25, 2: 20, 3: 10}
DEFAULT_DEBUG = 0                    # Kamailio's default: L_WARN
DEBUG_OF_LEVEL = {"DEBUG": 3, "INFO": 2, "WARNING": 0, "ERROR": -1}   # --log-level names


def log_level(debug):
    """The Python logging level for Kamailio's `debug` value (clamped as dprint does)."""
    return LOG_LEVELS[max(-5, min(3, debug))]


class ListenError(ValueError):
    """A listen= value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Listen:
    """One UDP socket of the SIP front end."""

    spec: str        # as written, e.g. "udp:127.0.0.1:5060"
    ipv6: bool
    host: str
    port: int
    where: str = None

    @property
    def name(self):
        """As Kamailio's process table names the socket: without the "udp:"."""
        return self.spec.split(":", 1)[1] if self.spec.startswith("udp:") else self.spec


@dataclass(frozen=True)
class Fifo:
    """A server FIFO (mi_fifo or jsonrpcs) and its params."""

    path: str
    where: str       # FILE:LINE of the fifo_name modparam, or of the loadmodule
    statement: str   # e.g. 'modparam("mi_fifo", "fifo_name", ...)'
    mode: int
    user: object
    group: object
    reply_dir: str
    options: dict = field(default_factory=dict)   # reply_indent / pretty_format


@dataclass(frozen=True)
class Ctl:
    """One ctl binrpc address: kind "unix" | "unixd" | "tcp" | "udp"."""

    address: str
    kind: str
    target: object   # a path, or (host, port)
    where: str
    statement: str   # 'modparam("ctl", "binrpc", "...")', or the loadmodule of a default
    mode: int = 0o600
    user: object = None
    group: object = None


@dataclass(frozen=True)
class Place:
    """A FIFO or unix socket file kamflat creates, and the statement that named it."""

    kind: str        # "fifo" or "socket"
    path: str
    statement: str
    where: str


@dataclass
class Model:
    """Everything resolved from one config (see the module docstring)."""

    config: object
    path: str
    children: int
    run_dir: str
    debug: int
    debug_set: bool
    db_dir: str
    acc_table: str
    missed_table: str
    db_extra: list            # [(column, pvar)]
    flush: bool
    encode_delimiter: bool
    encode_newlines: bool
    rotate_timeout: float     # seconds
    stop_grace: float         # seconds a stop keeps retrying writes that fail
    ingest_max_connections: int
    ingest_idle_timeout: float   # seconds; 0: never
    ingest_socket: Place
    mi_fifo: Fifo
    jsonrpc_fifo: Fifo
    ctl: list
    listen: list
    sip: dict                 # AccHandler keyword args, None without listen=
    shv: dict
    modules: list

    @property
    def db_url(self):
        return "flatstore:" + self.db_dir if self.db_dir else None

    @property
    def extra_columns(self):
        return [column for column, _ in self.db_extra]

    def sip_handler(self):
        """A new AccHandler for the SIP front end (None without listen=)."""
        return acc.AccHandler(**self.sip) if self.sip is not None else None

    def places(self):
        """Every FIFO and unix socket file kamflat creates, in the order it creates them."""
        places = []
        if self.ingest_socket:
            places.append(self.ingest_socket)
        for fifo in (self.mi_fifo, self.jsonrpc_fifo):
            if fifo:
                places.append(Place("fifo", fifo.path, fifo.statement, fifo.where))
        for ctl in self.ctl:
            if ctl.kind in ("unix", "unixd"):
                places.append(Place("socket", ctl.target, ctl.statement, ctl.where))
        return places


def _error(message, where):
    if where is None:
        return ConfigError(message)
    file, _, line = where.rpartition(":")
    return ConfigError(message, file, int(line)) if line.isdigit() else ConfigError(message, where)


def under_run_dir(run_dir, path):
    """A relative path the way Kamailio 4.0+ resolves it (mi_fifo, jsonrpcs): under run_dir."""
    if not path or path.startswith("/"):
        return path
    return run_dir.rstrip("/") + "/" + path


def parse_listen(spec, where=None):
    """"udp:ADDR:PORT", "udp:[::1]:PORT", "ADDR:PORT", "ADDR", "udp:*:5060" -> Listen.
    Only UDP is served; raises ListenError naming the value."""
    text = spec.strip()
    proto, sep, rest = text.partition(":")
    if sep and proto.lower() in LISTEN_PROTOS:
        if proto.lower() != "udp":
            raise ListenError("listen=%s: only udp is supported by kamflat" % spec)
        text = rest
    ipv6 = text.startswith("[")
    if ipv6:
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ListenError("listen=%s: bad IPv6 address (expected [ADDR]:PORT)" % spec)
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ListenError("listen=%s: put an IPv6 address in brackets: udp:[ADDR]:PORT"
                              % spec)
    if not host:
        raise ListenError("listen=%s: no address" % spec)
    if port_text == "":
        port = DEFAULT_PORT
    elif port_text.isdigit() and 0 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ListenError("listen=%s: bad port %r (expected 0..65535)" % (spec, port_text))
    if host == "*":
        host = "::" if ipv6 else "0.0.0.0"
    return Listen(spec, ipv6, host, port, where)


def parse_ctl_address(address):
    """("unix"|"unixd"|"tcp"|"udp", target) for a ctl `binrpc` address; ValueError if bad."""
    proto, sep, rest = address.partition(":")
    if not sep or proto not in CTL_PROTOS:
        if "/" in address:
            return "unix", address
        raise ValueError("ctl address %r: expected unix:PATH, unixs:PATH, unixd:PATH, "
                         "tcp:HOST:PORT or udp:HOST:PORT" % address)
    if proto in ("unix", "unixs"):
        return "unix", rest
    if proto == "unixd":
        return "unixd", rest
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("ctl address %r: expected %s:HOST:PORT" % (address, proto))
    return proto, (host, int(port))


def load_model(path, defines=(), serving=True):
    """resolve(load_config(path, defines)): what serve, check and the clients' -f read."""
    return resolve(load_config(path, defines), serving)


def resolve(config, serving=True):
    """The Model of a parsed Config. Raises ConfigError with FILE:LINE.

    serving=False is for clients that only look up paths and tables (fifo, rpc, send,
    gen -f): a config written for a real Kamailio, with no acc directory or with TCP
    listens, still gives its FIFOs and sockets; listen= and the SIP params are then
    neither read nor checked (the model has listen [] and sip None).
    """
    run_dir = config.run_dir
    loaded = config.has_module
    db_dir = config.db_dir
    if serving and not db_dir:
        raise ConfigError('no accounting directory: kamflat needs acc loaded with '
                          'modparam("acc", "db_url", "flatstore:/DIR")', config.path)
    debug = config.core("debug")
    listen = _listen(config) if serving else []
    db_extra = _db_extra(config, strict=bool(listen))
    return Model(
        config=config, path=config.path, children=config.children, run_dir=run_dir,
        debug=DEFAULT_DEBUG if debug is None else debug, debug_set=debug is not None,
        db_dir=db_dir,
        acc_table=config.param("acc", "db_table_acc"),
        missed_table=config.param("acc", "db_table_missed_calls"),
        db_extra=db_extra,
        flush=bool(config.param("db_flatstore", "flush")),
        encode_delimiter=bool(config.param("db_flatstore", "encode_delimiter")),
        encode_newlines=bool(config.param("kamflat", "encode_newlines")),
        rotate_timeout=config.param("kamflat", "rotate_timeout") / 1000.0,
        stop_grace=config.param("kamflat", "stop_grace") / 1000.0,
        ingest_max_connections=config.param("kamflat", "ingest_max_connections"),
        ingest_idle_timeout=config.param("kamflat", "ingest_idle_timeout") / 1000.0,
        ingest_socket=_ingest(config),
        mi_fifo=_mi_fifo(config, run_dir) if loaded("mi_fifo") else None,
        jsonrpc_fifo=_jsonrpc_fifo(config, run_dir) if loaded("jsonrpcs") else None,
        ctl=_ctl(config, run_dir) if loaded("ctl") else [],
        listen=listen,
        sip=_sip(config, db_extra) if listen else None,
        shv=config.shv,
        modules=list(config.modules),
    )


def _param_where(config, module, name):
    """FILE:LINE of the modparam that set the param, else of the module's loadmodule."""
    return config.where(module, name) or config.loaded_at(module)


def _ingest(config):
    path = config.param("kamflat", "ingest_socket")
    if not path:
        return None
    where = config.where("kamflat", "ingest_socket")
    # a relative name is under run_dir, as Kamailio 4.0+ does for its FIFOs
    return _socket_place(under_run_dir(config.run_dir, path),
                         'modparam("kamflat", "ingest_socket", ...)', where)


def _socket_place(path, statement, where):
    size = len(path.encode())
    if size > MAX_SOCKET_PATH:
        raise _error("%s: the unix socket path %s is %d bytes, longer than the %d a unix "
                     "socket path may have" % (statement, path, size, MAX_SOCKET_PATH), where)
    return Place("socket", path, statement, where)


def _mi_fifo(config, run_dir):
    # mi_fifo 3.3 refused to start without fifo_name; 4.0 made run_dir/kamailio_fifo the
    # default and resolves a relative name against run_dir, as kamflat does for both.
    name = config.param("mi_fifo", "fifo_name") or MI_FIFO_DEFAULT
    return Fifo(under_run_dir(run_dir, name), _param_where(config, "mi_fifo", "fifo_name"),
                'modparam("mi_fifo", "fifo_name", ...)' if config.where("mi_fifo", "fifo_name")
                else 'loadmodule "mi_fifo.so"',
                config.param("mi_fifo", "fifo_mode"), config.param("mi_fifo", "fifo_user"),
                config.param("mi_fifo", "fifo_group"), config.param("mi_fifo", "reply_dir"),
                {"reply_indent": config.param("mi_fifo", "reply_indent")})


def _jsonrpc_fifo(config, run_dir):
    transport = config.param("jsonrpcs", "transport")
    if not (transport == 0 or transport & 2):          # 2: the FIFO transport
        return None
    name = config.param("jsonrpcs", "fifo_name")
    return Fifo(under_run_dir(run_dir, name), _param_where(config, "jsonrpcs", "fifo_name"),
                'modparam("jsonrpcs", "fifo_name", ...)'
                if config.where("jsonrpcs", "fifo_name") else 'loadmodule "jsonrpcs.so"',
                config.param("jsonrpcs", "fifo_mode"), config.param("jsonrpcs", "fifo_user"),
                config.param("jsonrpcs", "fifo_group"), config.param("jsonrpcs", "fifo_reply_dir"),
                {"pretty_format": config.param("jsonrpcs", "pretty_format")})


def _ctl(config, run_dir):
    settings = config.settings("ctl", "binrpc")
    if settings:
        values = [(s.value, "%s:%d" % (s.file, s.line), 'modparam("ctl", "binrpc", "%s")'
                   % s.value) for s in settings]
    else:
        # ctl's mod_init: the default socket follows run_dir when it was changed
        # (modules/ctl/ctl.c, DEFAULT_CTL_SOCKET_PROTO + runtime_dir + "/" + NAME "_ctl")
        default = config.param("ctl", "binrpc")
        if config.run_dir_where():
            default = "unixs:" + run_dir.rstrip("/") + "/" + CTL_SOCKET_NAME
        values = [(default, config.loaded_at("ctl"), 'loadmodule "ctl.so"')]
    entries = []
    for address, where, statement in values:
        try:
            kind, target = parse_ctl_address(address)
        except ValueError as exc:
            raise _error(str(exc), where) from None
        if kind in ("unix", "unixd"):
            _socket_place(target, statement, where)
        entries.append(Ctl(address, kind, target, where, statement, config.param("ctl", "mode"),
                           config.param("ctl", "user"), config.param("ctl", "group")))
    return entries


def _listen(config):
    entries = []
    for spec, where in zip(config.listen, config.listen_at):
        try:
            entries.append(parse_listen(spec, where))
        except ListenError as exc:
            raise _error(str(exc), where) from None
    return entries


def _db_extra(config, strict):
    """acc's db_extra as [(column, pvar)]; with the SIP front end (strict) every pvar must
    be one it evaluates, else only the columns count (records come in ready-made)."""
    text = config.param("acc", "db_extra") if config.has_module("acc") else None
    try:
        return pv.parse_db_extra(text or "", check=strict)
    except pv.PvarError as exc:
        raise _error(str(exc), config.where("acc", "db_extra")) from None


def _sip(config, db_extra):
    """The SIP front end's AccHandler args; each value checked with its statement's place."""
    param = config.param

    def checked(name, parse, value):
        try:
            parse(value)
        except acc.ParamError as exc:
            raise _error(str(exc), config.where("kamflat", name)) from None
        return value

    replies = []
    for setting in config.settings("kamflat", "sip_reply") or []:
        try:
            acc.AccHandler(reply_overrides=[setting.value]) if "=" in setting.value \
                else acc.parse_reply_spec(setting.value)
        except acc.ParamError as exc:
            raise ConfigError(str(exc), setting.file, setting.line) from None
        replies.append(setting.value)
    plain = [v for v in replies if "=" not in v]
    server = param("kamflat", "sip_server_header")
    return dict(
        acc_methods=checked("acc_methods", acc.parse_methods, param("kamflat", "acc_methods")),
        reply=plain[-1] if plain else "200 OK",
        reply_overrides=[v for v in replies if "=" in v],
        db_extra=";".join("%s=%s" % pair for pair in db_extra),
        table_acc=param("acc", "db_table_acc"),
        table_missed=param("acc", "db_table_missed_calls"),
        missed_calls=bool(param("kamflat", "sip_missed_calls")),
        server=acc.SERVER_HEADER if server is None else server,
    )
