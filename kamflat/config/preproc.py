"""Kamailio's config preprocessor and lexer: config text in, tokens out.

This is the part of Kamailio's cfg.lex that decides *what text the parser sees*:
`#!define` and friends, `#!ifdef` blocks, `#!subst`, `include_file`/`import_file`,
comments, strings, numbers and token-level define expansion. cfg.py turns the
tokens into a Config.

It works like Kamailio's flex scanner, on the same rules:
- Directives start with `#!` or `!!` wherever the scanner is between tokens (not inside
  a string or comment); `#!KAMAILIO` (or `//!KAMAILIO`) on a line of its own picks the
  compatibility mode.
- A defined name met as an identifier is replaced by its value *in the input* and the
  value is scanned again, so defines nest and can even carry comments; text in quotes
  is never expanded.
- Double-quoted strings separated only by white space are one string; `'raw'` strings
  take no escapes.

Pure: the only IO is `read_file(path) -> str`, used for include_file/import_file and
passed in by the caller (load_config passes the default, `read_text_file`).
"""
import re
from dataclasses import dataclass

from kamflat.config.regex import parse_subst
from kamflat.config.tokens import (YES_WORDS, ConfigError, Preprocessed, Token,
                                   read_text_file, word_token)

__all__ = ["ConfigError", "Preprocessed", "Token", "preprocess", "read_text_file"]

MAX_INCLUDE_DEPTH = 10      # Kamailio's MAX_INCLUDE_DEPTH
MAX_NESTED_EXPANSIONS = 200  # a define that expands into itself would loop forever

# Defines Kamailio 5.6 sets itself (pp_define_core), plus kamflat's own marker so a
# config can say `#!ifdef KAMFLAT`.
BUILTIN_DEFINES = {
    "KAMAILIO_5": "",
    "KAMAILIO_5_6": "",
    "KAMAILIO_5_6_3": "",
    "KAMAILIO_VERSION": "5006003",
    "OS_NAME": '"linux"',
    "KAMFLAT": "",
}

EAT = " \t\b\r"  # Kamailio's EAT_ABLE: white space that is not a newline
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
WORD_RE = re.compile(r"[A-Za-z0-9_]+")
DIRECTIVE_RE = re.compile(
    r"(?:#!|!!)(define|def|trydefine|trydef|redefine|redef|ifdef|ifndef|else|endif"
    r"|substdefs|substdef|subst|include_file|import_file"
    r"|undef|tryundef|ifexp|defexps|defexp|defenvs|defenv|trydefenvs|trydefenv)"
    r"(?![A-Za-z0-9_])")
COMPAT_RE = re.compile(r"(?:#|//)!(KAMAILIO|OPENSER|SER|MAXCOMPAT|ALL)[ \t\r]*(?=\n|\Z)")
COMMENT_MARK_RE = re.compile(r"/\*|\*/")
HEX_ESCAPE_RE = re.compile(r"x([0-9a-fA-F]{1,2})")
OCTAL_ESCAPE_RE = re.compile(r"[0-7]{2,3}")
PVAR_NAME_RE = re.compile(r"[A-Za-z0-9_.]*")
INCLUDE_NAME_RE = re.compile(r"[ \t]*([^ \t\r\n]*)")
SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "a": "\a", "t": "\t", '"': '"', "\\": "\\"}
SKIP_RE = re.compile(r"(?:#!|!!)(ifdef|ifndef|else|endif)(?![A-Za-z0-9_])")
NAME_AFTER_RE = re.compile(r"[ \t\b\r]+([A-Za-z_][A-Za-z0-9_]*)(-?)")
SUPPORTED_DIRECTIVES = ("define", "trydef", "redef", "ifdef", "ifndef", "else", "endif",
                        "subst", "substdef", "substdefs", "undef", "tryundef", "defenv",
                        "defenvs", "trydefenv", "trydefenvs", "include_file", "import_file")
DEFINE_KINDS = {"define": "define", "def": "define", "trydefine": "trydef",
                "trydef": "trydef", "redefine": "redef", "redef": "redef"}


def preprocess(text, path="<string>", defines=(), read_file=read_text_file, environ=None):
    """Preprocess and scan config `text` read from `path`.

    `defines` are the `-A` arguments: "NAME" or "NAME=VALUE". Raises ConfigError.
    """
    scanner = _Scanner(read_file, environ or {})
    for arg in defines:
        name, _, value = arg.partition("=")
        if not NAME_RE.match(name):
            raise ConfigError("-A %s: a define name is letters, digits and _ and does not "
                              "start with a digit" % arg)
        scanner.define("define", name, value, "-A", None)
    scanner.files.append(path)
    scanner.scan(text, path, depth=0)
    if scanner.ifdefs:
        top = scanner.ifdefs[-1]
        raise ConfigError("#!%s %s is never closed: add #!endif after its block"
                          % (top.directive, top.name), top.file, top.line)
    return Preprocessed(scanner.tokens, {k: v for k, (v, _w) in scanner.defines.items()},
                        scanner.warnings, scanner.compat, scanner.files)


@dataclass
class _Ifdef:
    """One open #!ifdef/#!ifndef."""

    directive: str
    name: str
    file: str
    line: int
    holds: bool          # the test's result when the directive was read
    outer: bool          # every enclosing block is active
    in_else: bool = False

    @property
    def active(self):
        return self.outer and (self.holds != self.in_else)


class _Scanner:
    """Scans one file after another (includes recurse); state is shared across files."""

    def __init__(self, read_file, environ):
        self.read_file = read_file
        self.environ = environ          # for #!defenv: passed in, never read here
        self.defines = {name: (value, "built in") for name, value in BUILTIN_DEFINES.items()}
        self.substs = []
        self.ifdefs = []    # open _Ifdef blocks, innermost last
        self.tokens = []
        self.warnings = []
        self.files = []
        self.compat = None

    # ---- defines -------------------------------------------------------------
    def define(self, kind, name, value, file, line):
        where = "%s:%d" % (file, line) if line else file
        if name in self.defines:
            if kind == "trydef":
                return
            if kind == "define":
                raise ConfigError("%s is already defined (%s); use #!redefine to change it or "
                                  "#!trydef to keep the first value"
                                  % (name, self.defines[name][1]), file, line)
        self.defines[name] = (value, where)

    # ---- the scanner ---------------------------------------------------------
    def scan(self, text, file, depth):
        n = len(text)
        p, line = 0, 1
        newline, space = True, True
        expansions = 0
        while p < n:
            c = text[p]
            if c in EAT:
                p += 1
                space = True
                continue
            if c == "\n":
                p, line, newline, space = p + 1, line + 1, True, True
                continue
            if c == "\\" and text.startswith("\n", p + 1):   # escaped newline: eaten
                p, line, space = p + 2, line + 1, True
                continue
            if c in "#/!":
                m = COMPAT_RE.match(text, p)
                if m:
                    self.compat = m.group(1)
                    p = m.end()
                    continue
                m = DIRECTIVE_RE.match(text, p)
                if m:
                    p, line = self.directive(m, text, file, line, depth)
                    if self.ifdefs and not self.ifdefs[-1].active:
                        p, line = self.skip(text, p, file, line)
                    newline = space = True
                    continue
                if c == "#" or text.startswith("//", p):
                    eol = text.find("\n", p)
                    p = n if eol < 0 else eol
                    continue
                if text.startswith("/*", p):
                    p, line = self.block_comment(text, p, file, line)
                    space = True
                    continue
            start_line = line
            if c == '"':
                value, raw, p, line = self.dq_string(text, p, file, line)
                token = ("str", self.subst(value), raw)
            elif c == "'":
                end = text.find("'", p + 1)
                if end < 0:
                    raise ConfigError("unclosed 'string': no closing ' before the end of "
                                      "the file", file, line)
                raw = text[p:end + 1]
                line += raw.count("\n")
                p = end + 1
                token = ("str", self.subst(raw[1:-1]), raw)
            elif c == "$":
                raw = self.pvar(text, p, file, line)
                p += len(raw)
                token = ("pvar", self.subst(raw), raw)
            elif WORD_RE.match(c):
                word = WORD_RE.match(text, p).group()
                if word in ("include_file", "import_file"):
                    p = self.include(word, text, p + len(word), file, line, depth)
                    if self.ifdefs and not self.ifdefs[-1].active:  # left open by the file
                        p, line = self.skip(text, p, file, line)
                    newline = space = True
                    continue
                if word in self.defines and NAME_RE.match(word) and word not in YES_WORDS:
                    expansions += 1
                    if expansions > MAX_NESTED_EXPANSIONS:
                        raise ConfigError("#!define %s expands into itself" % word, file, line)
                    text = text[:p] + self.defines[word][0] + text[p + len(word):]
                    n = len(text)
                    continue
                p += len(word)
                token = word_token(word)
            else:
                p += 1
                token = ("punct", c, c)
            kind, value, raw = token
            self.tokens.append(Token(kind, value, raw, file, start_line, line, newline, space))
            newline = space = False
            expansions = 0

    def subst(self, s):
        """Apply every #!subst rule so far, in order, as Kamailio's pp_subst_run."""
        if not s:
            return s
        for rule in self.substs:
            changed = rule.apply(s)
            if changed is not None:
                s = changed
        return s

    def block_comment(self, text, p, file, line):
        """Skip a /* comment */ (they nest, as in Kamailio); returns (end, line)."""
        start_line, nest, q = line, 0, p
        while True:
            m = COMMENT_MARK_RE.search(text, q)
            if m is None:
                raise ConfigError("unclosed /* comment: no */ before the end of the file",
                                  file, start_line)
            nest += 1 if m.group() == "/*" else -1
            q = m.end()
            if nest == 0:
                return q, line + text.count("\n", p, q)

    def dq_string(self, text, p, file, line):
        """A "string" with escapes, joined with "strings" that follow after white space.

        Returns (value, raw text, end position, line at the end).
        """
        start, start_line, out, q, n = p, line, [], p + 1, len(text)
        while True:
            if q >= n:
                raise ConfigError('unclosed "string": no closing " before the end of the file',
                                  file, start_line)
            c = text[q]
            if c == '"':
                gap = q + 1
                while gap < n and text[gap] in EAT + "\n":
                    gap += 1
                if gap < n and text[gap] == '"':        # "a" "b" is "ab"
                    line += text.count("\n", q, gap)
                    q = gap + 1
                    continue
                return "".join(out), text[start:q + 1], q + 1, line
            if c == "\n":
                line += 1
            if c != "\\" or q + 1 >= n:
                out.append(c)
                q += 1
                continue
            e = text[q + 1]
            hexa = HEX_ESCAPE_RE.match(text, q + 1)
            octal = OCTAL_ESCAPE_RE.match(text, q + 1)
            if e in SIMPLE_ESCAPES:
                out.append(SIMPLE_ESCAPES[e])
                q += 2
            elif hexa:
                out.append(chr(int(hexa.group(1), 16)))
                q = hexa.end()
            elif octal:
                out.append(chr(int(octal.group(), 8) & 0xFF))
                q = octal.end()
            elif e == "\n":                              # escaped newline: eaten
                line += 1
                q += 2
            else:                                        # unknown escape: kept as written
                out.append("\\")
                q += 1

    @staticmethod
    def pvar(text, p, file, line):
        """The raw text of a pseudo-variable: $name, $name(...), $(...), $? ."""
        q = p + 1
        if text.startswith("?", q):
            return "$?"
        m = PVAR_NAME_RE.match(text, q)
        q = m.end()
        if text.startswith("(", q):
            depth = 0
            while True:
                if q >= len(text) or text[q] == "\n":
                    raise ConfigError("pseudo-variable %s has an unclosed '('"
                                      % text[p:q].strip(), file, line)
                depth += {"(": 1, ")": -1}.get(text[q], 0)
                q += 1
                if depth == 0:
                    break
        return text[p:q]

    # ---- directives ----------------------------------------------------------
    def directive(self, m, text, file, line, depth):
        """Carry out the directive matched by DIRECTIVE_RE; returns (position, line)."""
        name, p = m.group(1), m.end()
        eol = text.find("\n", p)
        eol = len(text) if eol < 0 else eol
        if name in DEFINE_KINDS:
            return self.define_directive(DEFINE_KINDS[name], name, text, p, file, line)
        if name in ("ifdef", "ifndef"):
            self.ifdef(name, text[p:eol], file, line)
            return eol, line
        if name in ("else", "endif"):
            self.else_endif(name, text[p:eol], file, line)
            return eol, line
        if name in ("subst", "substdef", "substdefs"):
            return self.subst_directive(name, text, p, file, line)
        if name in ("include_file", "import_file"):
            return self.include(name, text, p, file, line, depth), line
        if name in ("undef", "tryundef"):
            self.undefine(name, text[p:eol], file, line)
            return eol, line
        if name in ("defenv", "defenvs", "trydefenv", "trydefenvs"):
            self.define_env(name, text[p:eol], file, line)
            return eol, line
        raise ConfigError("#!%s is not supported by kamflat (it reads every directive of "
                          "Kamailio 3.3-6.0 but the expression ones: %s)"
                          % (name, ", ".join(SUPPORTED_DIRECTIVES)), file, line)

    def undefine(self, directive, rest, file, line):
        m = NAME_AFTER_RE.match(rest)
        if not m or rest[m.end():].strip(EAT):
            raise ConfigError("#!%s needs one define name" % directive, file, line)
        if self.defines.pop(m.group(1), None) is None and directive == "undef":
            raise ConfigError("#!undef %s: %s is not defined (#!tryundef does not mind)"
                              % (m.group(1), m.group(1)), file, line)

    def define_env(self, directive, rest, file, line):
        """#!defenv [NAME=]VAR: NAME (or VAR) defined as VAR's value in the environment;
        defenvs quotes it as a string; the try forms skip a VAR that is not set
        (Kamailio's pp_define_env)."""
        spec = rest.strip(EAT)
        name, eq, var = spec.partition("=")
        name, var = name.strip(EAT), (var if eq else name).strip(EAT)
        if not NAME_RE.match(name) or not var:
            raise ConfigError("#!%s needs NAME=ENVVAR or ENVVAR, got %r" % (directive, spec),
                              file, line)
        value = self.environ.get(var)
        if value is None:
            if directive.startswith("try"):
                return
            raise ConfigError("#!%s %s: the environment variable %s is not set"
                              % (directive, spec, var), file, line)
        if directive.endswith("s"):
            value = '"%s"' % value
        self.define("define", name, value, file, line)

    def define_directive(self, kind, written, text, p, file, line):
        m = NAME_AFTER_RE.match(text, p)
        if not m:
            raise ConfigError("#!%s needs a name: letters, digits and _, not starting with "
                              "a digit" % written, file, line)
        if m.group(2):
            raise ConfigError("'-' is not allowed in the #!%s name %s-..., use _"
                              % (written, m.group(1)), file, line)
        value, q, lines = [], m.end(), 0
        while True:              # the value runs to the end of the line; \ continues it
            eol = text.find("\n", q)
            eol = len(text) if eol < 0 else eol
            if eol > q and text[eol - 1] == "\\" and eol < len(text):
                value.append(text[q:eol - 1])
                q, lines = eol + 1, lines + 1
                continue
            value.append(text[q:eol])
            break
        self.define(kind, m.group(1), "".join(value).strip(EAT), file, line)
        return eol, line + lines

    def ifdef(self, directive, rest, file, line):
        m = NAME_AFTER_RE.match(rest)
        if not m:
            raise ConfigError("#!%s needs a define name" % directive, file, line)
        if m.group(2):
            raise ConfigError("'-' is not allowed in the #!%s name %s-..., use _"
                              % (directive, m.group(1)), file, line)
        if rest[m.end():].strip(EAT):
            self.warnings.append("%s:%d: text after #!%s %s is ignored: %r"
                                 % (file, line, directive, m.group(1),
                                    rest[m.end():].strip(EAT)))
        name = m.group(1)
        outer = all(block.active for block in self.ifdefs)
        holds = (name in self.defines) == (directive == "ifdef")
        self.ifdefs.append(_Ifdef(directive, name, file, line, holds, outer))

    def else_endif(self, directive, rest, file, line):
        if rest.strip(EAT):
            raise ConfigError("#!%s must be alone on its line, found %r after it (Kamailio "
                              "reads such a line as a comment); put comments on their own "
                              "line" % (directive, rest.strip(EAT)), file, line)
        if not self.ifdefs:
            if directive == "endif":
                raise ConfigError("#!endif without an open #!ifdef or #!ifndef", file, line)
            self.warnings.append("%s:%d: #!else without an open #!ifdef or #!ifndef is "
                                 "ignored" % (file, line))
            return
        if directive == "endif":
            self.ifdefs.pop()
        else:                    # a second #!else flips back, as in Kamailio
            self.ifdefs[-1].in_else = not self.ifdefs[-1].in_else

    def skip(self, text, p, file, line):
        """Skip an inactive #!ifdef branch; only if/else/endif directives count there."""
        while self.ifdefs and not self.ifdefs[-1].active:
            m = SKIP_RE.search(text, p)
            if m is None:
                return len(text), line + text.count("\n", p)
            line += text.count("\n", p, m.start())
            p, _line = self.directive(m, text, file, line, depth=0)
        return p, line

    def subst_directive(self, name, text, p, file, line):
        q = p
        while q < len(text) and text[q] in EAT:
            q += 1
        if q < len(text) and text[q] == '"':
            value, _raw, q, end_line = self.dq_string(text, q, file, line)
        elif q < len(text) and text[q] == "'":
            end = text.find("'", q + 1)
            if end < 0:
                raise ConfigError("unclosed 'string' after #!%s" % name, file, line)
            value, end_line = text[q + 1:end], line + text.count("\n", q, end)
            q = end + 1
        else:
            raise ConfigError('#!%s needs a quoted "/regex/replacement/flags" on the same line'
                              % name, file, line)
        value = self.subst(value)
        try:
            rule = parse_subst(value)
        except ValueError as error:
            raise ConfigError(str(error), file, line) from None
        self.substs.append(rule)
        if name != "subst":      # substdef(s): also #!define regex-text replacement-text
            sep = value[0]
            pieces = re.split(r"(?<!\\)" + re.escape(sep), value[1:])
            replacement = pieces[1]
            if name == "substdefs":
                replacement = '"%s"' % replacement
            if not pieces[0]:
                raise ConfigError("#!%s needs a name before the replacement" % name, file, line)
            self.define("define", pieces[0], replacement, file, line)
        return q, end_line

    def include(self, how, text, p, file, line, depth):
        """include_file "name" / import_file "name": scan that file here."""
        m = INCLUDE_NAME_RE.match(text, p)
        raw = self.subst(m.group(1))
        if len(raw) < 3 or raw[0] != '"' or raw[-1] != '"':
            raise ConfigError('%s needs a file name in double quotes on the same line, got %r'
                              % (how, raw), file, line)
        name = re.sub(r"\\(.)", lambda e: {"t": "\t", "n": "\n", "r": "\r"}.get(
            e.group(1), e.group(1)), raw[1:-1])
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError("%s %s: too many nested includes (the limit is %d; does a file "
                              "include itself?)" % (how, raw, MAX_INCLUDE_DEPTH), file, line)
        tried, failure = [], None
        candidates = [name]
        if not name.startswith("/") and "/" in file:
            candidates.append(file.rsplit("/", 1)[0] + "/" + name)
        for candidate in candidates:
            tried.append(candidate)
            try:
                content = self.read_file(candidate)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                failure = failure or "%s: %s" % (candidate, e.strerror or e)
                continue
            self.files.append(candidate)
            self.scan(content, candidate, depth + 1)
            return m.end()
        if how == "include_file" or failure:
            raise ConfigError("cannot open included file %s (%s)"
                              % (raw, failure or "tried " + " and ".join(tried)), file, line)
        return m.end()      # import_file: a missing file is silently skipped
