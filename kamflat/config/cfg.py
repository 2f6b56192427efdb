"""Read a Kamailio config into a typed Config: the parts kamflat emulates.

`load_config(path)` reads a real kamailio.cfg. The preprocessor (preproc.py) gives the
tokens; this module reads the core statements kamflat uses (`children`, `listen`,
`mpath`, `loadmodule`, `modparam`) and parses past everything else: other global
parameters and every route block are skipped with balanced braces and listed in
`Config.ignored`, so one notice can say what kamflat does not emulate.

modparam follows Kamailio's rules (core/modparam.c): the module name is a
case-insensitive POSIX regex anchored as `^(name)$` (5.x) and matched against the
modules loaded so far, and the value's type comes from its syntax, so
`modparam("db_flatstore", "flush", "0")` is an error, as it is in Kamailio.

Pure: no IO except reading files through preproc's `read_file`.
"""
import difflib
import os
from dataclasses import dataclass

from kamflat.config import values as typed
from kamflat.config.modparams import EMULATED, KAMFLAT, KNOWN_NOT_EMULATED
from kamflat.config.regex import compile_ere
from kamflat.config.preproc import ConfigError, preprocess, read_text_file

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

DEFAULT_CHILDREN = 8   # Kamailio's default
DEFAULT_RUN_DIR = "/var/run/kamailio/"   # Kamailio's RUN_DIR (Debian's build too)
ROUTE_BLOCKS = {"route", "request_route", "failure_route", "reply_route", "onreply_route",
                "branch_route", "onsend_route", "event_route"}
SKIPPED_DECLARATIONS = {"flags", "bool", "avpflags", "cfgengine"}
RUN_DIR_NAMES = ("run_dir", "rundir")
# Core globals kamflat reads (so they are not in the notice of what was parsed past).
READ_GLOBALS = {"debug", *RUN_DIR_NAMES}
TOP_LEVEL_ERROR = "%s at the top level: expected name=value, loadmodule, modparam or a route block"


@dataclass(frozen=True)
class Setting:
    """One value given to a module param, and where."""

    value: object       # int or str
    file: str
    line: int


@dataclass(frozen=True)
class Ignored:
    """Something kamflat read past: kind is "statement", "block" or "module"."""

    kind: str
    name: str
    where: str

    def __str__(self):
        return self.name


class Config:
    """What kamflat takes from a Kamailio config. Build it with load_config/parse_config."""

    def __init__(self, path):
        self.path = path
        self.children = DEFAULT_CHILDREN
        self.listen = []        # as written, e.g. "udp:127.0.0.1:5060"
        self.listen_at = []     # "FILE:LINE" of each listen=
        self.modules = []       # loaded module names, in load order
        self.mpath = None
        self.globals = {}       # every other `name = value` global, last value (read only)
        self.defines = {}       # final #!define table: name -> value as written
        self.compat = None      # "KAMAILIO" for a #!KAMAILIO config
        self.ignored = []       # Ignored entries, in config order
        self.warnings = []      # "FILE:LINE: message"
        self.files = []         # every file read (the config, then its includes)
        self._settings = {}     # (module, param) -> [Setting]
        self._core = {}         # core name -> [Setting] (every `name = value` global)
        self._loaded_at = {}    # module -> "FILE:LINE" of its loadmodule

    def has_module(self, name):
        return name == KAMFLAT or name in self.modules

    def _declared(self, module, name):
        params = EMULATED.get(module)
        if params is None:
            return None
        if name not in params:
            raise KeyError("module %s has no parameter %r (known: %s)"
                           % (module, name, ", ".join(params)))
        return params[name]

    def param(self, module, name):
        """The last value set for module's param, else the emulated module's default."""
        settings = self._settings.get((module, name))
        if settings:
            return settings[-1].value
        declared = self._declared(module, name)
        return declared[1] if declared else None

    def param_values(self, module, name):
        """Every value set, in order (repeatable params); [default] when none was set."""
        settings = self._settings.get((module, name))
        if settings:
            return [s.value for s in settings]
        declared = self._declared(module, name)
        return [declared[1]] if declared and declared[1] is not None else []

    def where(self, module, name):
        """"FILE:LINE" of the last modparam that set module's param, or None."""
        settings = self._settings.get((module, name))
        return "%s:%d" % (settings[-1].file, settings[-1].line) if settings else None

    def settings(self, module, name):
        """Every Setting (value, file, line) given to module's param, in order."""
        return list(self._settings.get((module, name), ()))

    def loaded_at(self, module):
        """"FILE:LINE" of the loadmodule of `module`, or None."""
        return self._loaded_at.get(module)

    def core(self, name):
        """The last value of a core `name = value` global, or None."""
        settings = self._core.get(name)
        return settings[-1].value if settings else None

    def core_where(self, name):
        settings = self._core.get(name)
        return "%s:%d" % (settings[-1].file, settings[-1].line) if settings else None

    @property
    def run_dir(self):
        """Kamailio's runtime directory: the last `run_dir=`/`rundir=`, else its default."""
        return self.core("run_dir") or DEFAULT_RUN_DIR

    def run_dir_where(self):
        return self.core_where("run_dir")

    @property
    def db_dir(self):
        """The directory of acc's `db_url = flatstore:DIR`, or None when acc writes no DB."""
        url = self.param("acc", "db_url") if self.has_module("acc") else None
        if not url:
            return None
        return url.split(":", 1)[1]

    @property
    def shv(self):
        """pv's shvset values as {name: int or str}, in config order."""
        values = {}
        for value in self.param_values("pv", "shvset"):
            name, kind, text = typed.split_xvar(value)
            values[name] = int(text) if kind == "i" else text
        return values

    def notice(self):
        """One line naming what was parsed past, or "" when nothing was."""
        groups = [("statements", "statement"), ("blocks", "block"),
                  ("modules", "module"), ("directives", "directive")]
        parts = []
        for title, kind in groups:
            names = list(dict.fromkeys(i.name for i in self.ignored if i.kind == kind))
            if names:
                parts.append("%s %s" % (title, ", ".join(names)))
        if not parts:
            return ""
        return "parsed past, not emulated: " + "; ".join(parts)


def load_config(path, defines=(), read_file=read_text_file):
    """Read the config file at `path` (with `-A` style `defines`, and #!defenv reading this
    process's environment). Raises ConfigError."""
    try:
        text = read_file(path)
    except OSError as e:
        raise ConfigError("cannot read the config file: %s" % (e.strerror or e), path)
    return parse_config(text, path, defines, read_file, os.environ)


def parse_config(text, path="<string>", defines=(), read_file=read_text_file, environ=None):
    """Parse config `text` as if read from `path`. Raises ConfigError."""
    source = preprocess(text, path, defines, read_file, environ)
    config = Config(path)
    config.defines = source.defines
    config.compat = source.compat
    config.files = source.files
    config.warnings.extend(source.warnings)
    _Parser(source.tokens, config, path).parse()
    _check(config)
    return config


class _Parser:
    def __init__(self, tokens, config, path):
        self.tokens, self.config, self.path = tokens, config, path
        self.i = 0

    # ---- token helpers -------------------------------------------------------
    def peek(self, offset=0):
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def error(self, message, token=None):
        token = token or self.peek() or (self.tokens[-1] if self.tokens else None)
        if token is None:
            return ConfigError(message, self.path)
        return ConfigError(message, token.file, token.line)

    def is_punct(self, token, chars):
        return token is not None and token.kind == "punct" and token.value in chars

    def expect_punct(self, char, what, at):
        token = self.peek()
        if not self.is_punct(token, char):
            raise self.error("%s: expected '%s', found %s"
                             % (what, char, typed.describe(token)), token or at)
        self.i += 1
        return token

    def statement_end(self, at_value=False):
        """Index just past this statement: a ';' or the next line outside brackets.

        The statement starts at the current token, or (at_value) its value does, and a
        value on the next line is no value (kamflat reads one statement per line).
        """
        depth, j = 0, self.i
        first = self.i if at_value else self.i + 1
        while j < len(self.tokens):
            token = self.tokens[j]
            if depth == 0 and j >= first and token.newline_before:
                return j
            if token.kind == "punct":
                if token.value in "([":
                    depth += 1
                elif token.value in ")]":
                    depth = max(0, depth - 1)
                elif token.value == ";" and depth == 0:
                    return j + 1
                elif token.value in "{}" and depth == 0:
                    return j
            j += 1
        return j

    # ---- statements ----------------------------------------------------------
    def parse(self):
        while self.i < len(self.tokens):
            token = self.peek()
            if self.is_punct(token, ";"):
                self.i += 1
            elif self.is_punct(token, "}"):
                raise self.error("unexpected '}': no block is open here")
            elif token.kind != "id":
                raise self.error(TOP_LEVEL_ERROR % typed.describe(token))
            elif token.value in ("loadmodule", "loadmodulex"):
                self.loadmodule()
            elif token.value in ("modparam", "modparamx"):
                self.modparam()
            elif token.value in ("mpath", "loadpath"):
                self.mpath()
            elif token.value in ROUTE_BLOCKS or self.is_punct(self.peek(1), "{"):
                self.block()
            elif self.is_punct(self.peek(1), "=") and self.is_punct(self.peek(2), "{"):
                self.block(assigned=True)      # 6.0: socket = { bind = ...; }
            elif self.is_punct(self.peek(1), "=."):
                self.assignment()
            elif token.value in SKIPPED_DECLARATIONS:
                self.skip_statement("statement")
            else:
                raise self.error(TOP_LEVEL_ERROR % typed.describe(token))

    def skip_statement(self, kind):
        token = self.peek()
        self.config.ignored.append(Ignored(kind, token.value, token.where))
        self.i = self.statement_end()

    def assignment(self):
        name_token = self.peek()
        name = name_token.value
        while self.is_punct(self.peek(1), ".") and self.peek(2) and self.peek(2).kind == "id":
            self.i += 2                        # cfg custom params: group.name = value
            name += "." + self.peek().value
        self.i += 1
        self.expect_punct("=", name, name_token)
        end = self.statement_end(at_value=True)
        value = [t for t in self.tokens[self.i:end] if not self.is_punct(t, ";")]
        if not value:
            raise self.error("%s= needs a value on the same line" % name, name_token)
        self.i = end
        if name == "children":
            self.config.children = self.children(value, name_token)
        elif name == "listen":
            self.config.listen.append(typed.as_written(value))
            self.config.listen_at.append(name_token.where)
        elif name in ("mpath", "loadpath"):
            self.config.mpath = self.string_value(value, name, name_token)
        else:
            self.global_value(name, value, name_token)

    def global_value(self, name, value, at):
        plain = typed.plain_value(value)
        if name == "debug" and not isinstance(plain, int):
            raise self.error("debug needs a number (Kamailio's log level, -5..3), got %s"
                             % typed.as_written(value), at)
        if name in RUN_DIR_NAMES:
            plain = self.string_value(value, name, at)
        self.config.globals[name] = plain
        key = "run_dir" if name in RUN_DIR_NAMES else name     # two names, one value
        self.config._core.setdefault(key, []).append(Setting(plain, at.file, at.line))
        if name not in READ_GLOBALS:
            self.config.ignored.append(Ignored("statement", name, at.where))

    def children(self, value, at):
        number = typed.int_value(value)
        if number is None:
            raise self.error("children needs a number of worker processes, got %s"
                             % typed.as_written(value), at)
        if not 1 <= number <= 1024:
            raise self.error("children must be between 1 and 1024 (kamflat needs at least "
                             "one writer process), got %d" % number, at)
        return number

    def string_value(self, value, name, at):
        if len(value) != 1 or value[0].kind != "str":
            raise self.error('%s needs a quoted "string", got %s'
                             % (name, typed.as_written(value)), at)
        return value[0].value

    def mpath(self):
        at = self.peek()
        self.i += 1
        if self.is_punct(self.peek(), "="):
            self.i += 1
        end = self.statement_end(at_value=True)
        value = [t for t in self.tokens[self.i:end] if not self.is_punct(t, ";")]
        self.config.mpath = self.string_value(value, at.value, at)
        self.i = end

    def block(self, assigned=False):
        """A route block: NAME [ '[' label ']' ] '{' ... '}', or NAME = { ... } (Kamailio
        6.0's socket blocks), skipped with balanced braces."""
        start = self.peek()
        name = start.value
        self.i += 2 if assigned else 1
        if assigned and name == "socket":
            self.config.warnings.append("%s: socket = { ... } is parsed past: kamflat's SIP "
                                        "front end listens only on listen= sockets"
                                        % start.where)
        if self.is_punct(self.peek(), "["):
            close = self.i
            while close < len(self.tokens) and not self.is_punct(self.tokens[close], "]{}"):
                close += 1
            if close >= len(self.tokens) or not self.is_punct(self.tokens[close], "]"):
                raise self.error("%s[...: the label has no closing ']'" % name, start)
            name += "[%s]" % "".join(t.value if t.kind == "str" else t.text
                                     for t in self.tokens[self.i + 1:close])
            self.i = close + 1
        opening = self.expect_punct("{", "%s must be followed by a { block }" % name, start)
        depth = 1
        while depth:
            token = self.peek()
            if token is None:
                raise self.error("%s: this '{' is never closed (a '}' is missing before the "
                                 "end of the file)" % name, opening)
            if token.kind == "punct" and token.value in "{}":
                depth += 1 if token.value == "{" else -1
            self.i += 1
        self.config.ignored.append(Ignored("block", name, start.where))

    # ---- loadmodule and modparam ---------------------------------------------
    def loadmodule(self):
        at = self.peek()
        self.i += 1
        token = self.peek()
        if token is None or token.kind != "str" or token.line != at.line:
            raise self.error('loadmodule needs a quoted module file name, e.g. loadmodule '
                             '"acc.so", got %s' % typed.describe(token), token or at)
        self.i += 1
        following = self.peek()
        if following is not None and following.kind == "str" and not following.newline_before:
            self.i += 1                      # loadmodulex / module options: not used
        name = token.value.rsplit("/", 1)[-1]
        if name.endswith(".so"):
            name = name[:-3]
        if not name:
            raise self.error("loadmodule needs a module name, got %s" % token.text, token)
        config = self.config
        if name == KAMFLAT:
            raise self.error('kamflat is not a loadable module: its params are always '
                             'available as modparam("kamflat", ...)', token)
        if name in config.modules:
            raise self.error("module %s is already loaded (at %s); Kamailio refuses to load a "
                             "module twice" % (name, config._loaded_at[name]), token)
        config.modules.append(name)
        config._loaded_at[name] = token.where
        if name not in EMULATED:
            config.ignored.append(Ignored("module", name, token.where))
            if name not in KNOWN_NOT_EMULATED:
                config.warnings.append("%s: unknown module %s: kamflat loads it without "
                                       "checks and accepts its params untyped"
                                       % (token.where, name))

    def modparam(self):
        at = self.peek()
        self.i += 1
        what = 'modparam("module", "param", value)'
        self.expect_punct("(", what, at)
        module = self.modparam_string("module name", at)
        self.expect_punct(",", what, at)
        param = self.modparam_string("parameter name", at)
        self.expect_punct(",", what, at)
        value_token = self.peek()
        value = self.modparam_value(value_token, at)
        self.expect_punct(")", what, at)
        self.set_param(module, param, value, value_token, at)

    def modparam_string(self, what, at):
        token = self.peek()
        if token is None or token.kind != "str":
            raise self.error('modparam: the %s must be a quoted string, got %s'
                             % (what, typed.describe(token)), token or at)
        self.i += 1
        return token.value

    def modparam_value(self, token, at):
        if token is not None and token.kind in ("str", "num"):
            self.i += 1
            return token.value
        if self.is_punct(token, "-") and self.peek(1) is not None and self.peek(1).kind == "num":
            self.i += 2
            return -self.peek(-1).value
        if token is not None and token.kind == "id":
            raise self.error("modparam value %s is neither a quoted string nor a number (is it "
                             "a #!define that is not defined?)" % token.text, token)
        raise self.error('modparam value must be a quoted string or a number, got %s'
                         % typed.describe(token), token or at)

    def set_param(self, pattern, param, value, token, at):
        config = self.config
        regex = compile_ere("^(" + pattern + ")$", icase=True)
        if regex is None:
            raise self.error('modparam: module name "%s" is not a valid regular expression'
                             % pattern, at)
        matched = [m for m in config.modules + [KAMFLAT] if regex.search(m)]
        if not matched:
            raise self.error('modparam: no loaded module matches "%s"; load it first with '
                             'loadmodule "%s.so" (loaded so far: %s)'
                             % (pattern, pattern, ", ".join(config.modules) or "none"), at)
        for module in matched:
            params = EMULATED.get(module)
            if params is not None and param not in params:
                if module == KAMFLAT and len(matched) > 1:
                    continue          # a wide regex also matched the always-there kamflat
                close = difflib.get_close_matches(param, params, n=3, cutoff=0.6)
                hint = "; did you mean %s?" % " or ".join(close) if close else ""
                raise self.error('modparam: module %s has no parameter "%s"%s (its '
                                 'parameters: %s)' % (module, param, hint,
                                                     ", ".join(params) or "none"), at)
            if params is not None:
                typed.check_value(module, param, value, params[param], token, config)
            config._settings.setdefault((module, param), []).append(
                Setting(value, at.file, at.line))


def _check(config):
    """Checks that need the whole config (Kamailio's mod_init refuses these)."""
    url = config.param("acc", "db_url") if config.has_module("acc") else None
    if url:
        file, line = config.where("acc", "db_url").rsplit(":", 1)
        scheme, colon, directory = url.partition(":")
        if scheme != "flatstore" or not colon:
            raise ConfigError('acc db_url "%s" is not something kamflat writes: kamflat '
                              'writes only flatstore:DIR (db_flatstore files)' % url,
                              file, int(line))
        if not directory:
            raise ConfigError('acc db_url "%s" names no directory; expected flatstore:DIR'
                              % url, file, int(line))
        if not config.has_module("db_flatstore"):
            raise ConfigError('acc db_url "%s" needs db_flatstore: add loadmodule '
                              '"db_flatstore.so"' % url, file, int(line))
