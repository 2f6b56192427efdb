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
from dataclasses import dataclass

from kamflat.config import modparams
from kamflat.config.modparams import EMULATED, INT, KAMFLAT, KNOWN_NOT_EMULATED, STR
from kamflat.config.regex import compile_ere
from kamflat.config.preproc import ConfigError, preprocess, read_text_file

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

DEFAULT_CHILDREN = 8   # Kamailio's default
DEFAULT_RUN_DIR = "/var/run/kamailio/"   # Kamailio's RUN_DIR (Debian's build too)
ROUTE_BLOCKS = {"route", "request_route", "failure_route", "reply_route", "onreply_route",
                "branch_route", "onsend_route", "event_route"}
SKIPPED_DECLARATIONS = {"flags", "bool", "avpflags", "cfgengine"}
INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1
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
        self.modules = []       # loaded module names, in load order
        self.mpath = None
        self.globals = {}       # every other `name = value` global, last value (read only)
        self.defines = {}       # final #!define table: name -> value as written
        self.compat = None      # "KAMAILIO" for a #!KAMAILIO config
        self.ignored = []       # Ignored entries, in config order
        self.warnings = []      # "FILE:LINE: message"
        self.files = []         # every file read (the config, then its includes)
        self._settings = {}     # (module, param) -> [Setting]
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

    @property
    def run_dir(self):
        """Kamailio's runtime directory: `run_dir=`/`rundir=`, else its default."""
        for name in ("run_dir", "rundir"):
            if isinstance(self.globals.get(name), str):
                return self.globals[name]
        return DEFAULT_RUN_DIR

    def runtime_path(self, path):
        """A relative path the way Kamailio's jsonrpcs resolves it: under run_dir."""
        if not path or path.startswith("/"):
            return path
        return self.run_dir.rstrip("/") + "/" + path

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
            name, kind, text = _split_xvar(value)
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
    """Read the config file at `path` (with `-A` style `defines`). Raises ConfigError."""
    try:
        text = read_file(path)
    except OSError as e:
        raise ConfigError("cannot read the config file: %s" % (e.strerror or e), path)
    return parse_config(text, path, defines, read_file)


def parse_config(text, path="<string>", defines=(), read_file=read_text_file):
    """Parse config `text` as if read from `path`. Raises ConfigError."""
    source = preprocess(text, path, defines, read_file)
    config = Config(path)
    config.defines = source.defines
    config.compat = source.compat
    config.files = source.files
    config.warnings.extend(source.warnings)
    if source.compat:
        config.ignored.append(Ignored("directive", "#!" + source.compat, path + ":1"))
    _Parser(source.tokens, config, path).parse()
    _check(config)
    return config


def _describe(token):
    if token is None:
        return "the end of the file"
    if token.kind == "str":
        return "the string %s" % token.text if len(token.text) < 60 else "a string"
    return repr(token.text)


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
            raise self.error("%s: expected '%s', found %s" % (what, char, _describe(token)),
                             token or at)
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
                raise self.error(TOP_LEVEL_ERROR % _describe(token))
            elif token.value in ("loadmodule", "loadmodulex"):
                self.loadmodule()
            elif token.value in ("modparam", "modparamx"):
                self.modparam()
            elif token.value in ("mpath", "loadpath"):
                self.mpath()
            elif token.value in ROUTE_BLOCKS or self.is_punct(self.peek(1), "{"):
                self.block()
            elif self.is_punct(self.peek(1), "=."):
                self.assignment()
            elif token.value in SKIPPED_DECLARATIONS:
                self.skip_statement("statement")
            else:
                raise self.error(TOP_LEVEL_ERROR % _describe(token))

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
            self.config.listen.append(_as_written(value))
        elif name in ("mpath", "loadpath"):
            self.config.mpath = self.string_value(value, name, name_token)
        else:
            self.config.globals[name] = _plain_value(value)
            self.config.ignored.append(Ignored("statement", name, name_token.where))

    def children(self, value, at):
        number = _int_value(value)
        if number is None:
            raise self.error("children needs a number of worker processes, got %s"
                             % _as_written(value), at)
        if not 1 <= number <= 1024:
            raise self.error("children must be between 1 and 1024 (kamflat needs at least "
                             "one writer process), got %d" % number, at)
        return number

    def string_value(self, value, name, at):
        if len(value) != 1 or value[0].kind != "str":
            raise self.error('%s needs a quoted "string", got %s' % (name, _as_written(value)),
                             at)
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

    def block(self):
        """A route block: NAME [ '[' label ']' ] '{' ... '}', skipped with balanced braces."""
        start = self.peek()
        name = start.value
        self.i += 1
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
                             '"acc.so", got %s' % _describe(token), token or at)
        self.i += 1
        if self.peek() is not None and self.peek().kind == "str" and not self.peek().newline_before:
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
                             % (what, _describe(token)), token or at)
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
                         % _describe(token), token or at)

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
                _check_value(module, param, value, params[param], token, config)
            config._settings.setdefault((module, param), []).append(
                Setting(value, at.file, at.line))


def _check_value(module, param, value, declared, token, config):
    """Kamailio's type check for one emulated param, plus what its mod_init rejects."""
    params_type = declared[0]      # EITHER takes both forms
    where = (token.file, token.line)
    if isinstance(value, int) and params_type == STR:
        raise ConfigError('modparam("%s", "%s", %s): %s takes a string, got the integer %s; '
                          'put it in double quotes' % (module, param, token.text, param,
                                                      token.text), *where)
    if isinstance(value, str) and params_type == INT:
        raise ConfigError('modparam("%s", "%s", %s): %s takes an integer, got a string; '
                          'write the number without quotes' % (module, param, token.text,
                                                              param), *where)
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise ConfigError('modparam("%s", "%s", %d): the value does not fit in a 32-bit int'
                          % (module, param, value), *where)
    if (module, param) in modparams.NO_EFFECT:
        config.warnings.append('%s:%d: modparam("%s", "%s") has no effect in kamflat: %s'
                               % (*where, module, param, modparams.NO_EFFECT[module, param]))
        if param != "file_suffix" and len(value) != 1:
            raise ConfigError('modparam("%s", "%s", %s): must be exactly one character'
                              % (module, param, token.text), *where)
    if module == "pv" and param in ("shvset", "varset") and _split_xvar(value) is None:
        raise ConfigError('modparam("pv", "%s", %s): expected "name=s:text" or '
                          '"name=i:number"' % (param, token.text), *where)


def _split_xvar(value):
    """pv's shvset/varset "name=s:text" | "name=i:number" -> (name, "s"|"i", text)."""
    name, eq, rest = value.partition("=")
    if not eq or not name or len(rest) < 2 or rest[0] not in "sSiI" or rest[1] != ":":
        return None
    kind, text = rest[0].lower(), rest[2:]
    if kind == "i":
        try:
            int(text.strip())
        except ValueError:
            return None
    return name, kind, text


def _check(config):
    """Checks that need the whole config (Kamailio's mod_init refuses these)."""
    if config.has_module("mi_fifo") and not config.param("mi_fifo", "fifo_name"):
        file, line = config._loaded_at["mi_fifo"].rsplit(":", 1)
        raise ConfigError('mi_fifo is loaded but has no fifo_name; add modparam("mi_fifo", '
                          '"fifo_name", "/tmp/kamailio_fifo") (Kamailio does not start '
                          'without one)', file, int(line))
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


def _as_written(tokens, string_values=True):
    """Tokens back to text, spaced as they were; strings by value or as written."""
    out = []
    for t in tokens:
        if out and t.space_before:
            out.append(" ")
        out.append(t.value if t.kind == "str" and string_values else t.text)
    return "".join(out)


def _int_value(tokens):
    if len(tokens) == 1 and tokens[0].kind == "num":
        return tokens[0].value
    if len(tokens) == 2 and tokens[0].text == "-" and tokens[1].kind == "num":
        return -tokens[1].value
    return None


def _plain_value(tokens):
    """A global's value: an int, a string's text, or the tokens as written."""
    number = _int_value(tokens)
    if number is not None:
        return number
    if len(tokens) == 1 and tokens[0].kind == "str":
        return tokens[0].value
    return _as_written(tokens, string_values=False)
