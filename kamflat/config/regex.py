"""Regular expressions in Kamailio configs, as pure code: POSIX extended regexes (modparam
module names, `#!subst`) run by Python's `re`, and `#!subst "/regex/replacement/flags"`
rules.
"""
import re
import warnings
from dataclasses import dataclass

POSIX_CLASSES = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
                 "lower": "a-z", "space": r" \t\n\r\f\v", "blank": r" \t",
                 "xdigit": "0-9A-Fa-f", "punct": r"!-/:-@\[-`{-~", "cntrl": r"\x00-\x1f\x7f",
                 "print": r" -~", "graph": r"!-~"}


def compile_ere(pattern, icase=False, dotall=False):
    """Compile a POSIX extended regular expression as Python `re`; None if it is invalid.

    Kamailio compiles with REG_NEWLINE unless told otherwise (`s` flag), so `^`/`$`
    match at line ends and `.` does not match a newline.
    """
    pattern = re.sub(r"\[:([a-z]+):\]",
                     lambda m: POSIX_CLASSES.get(m.group(1), m.group()), pattern)
    flags = (re.I if icase else 0) | (re.S if dotall else re.M)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return re.compile(pattern, flags)
        except (re.error, OverflowError, RecursionError):
            return None



@dataclass
class SubstRule:
    """One `#!subst "/regex/replacement/flags"` rule."""

    source: str
    regex: object
    parts: list     # literal strings and int group references, in order
    replace_all: bool

    def apply(self, s):
        """Kamailio's subst_str: the changed string, or None when nothing matched."""
        out, pos, matched = [], 0, False
        for m in self.regex.finditer(s):
            if m.start() == m.end():     # Kamailio: "matched string is empty" -> no change
                return None
            out.append(s[pos:m.start()])
            for part in self.parts:
                out.append(part if isinstance(part, str) else (m.group(part) or ""))
            pos, matched = m.end(), True
            if not self.replace_all:
                break
        if not matched:
            return None
        out.append(s[pos:])
        return "".join(out)


def parse_subst(expr):
    """Parse "/regex/replacement/flags" (any separator but backslash) into a SubstRule;
    ValueError says what is wrong."""
    def bad(why):
        return ValueError("bad #!subst expression %r: %s; expected \"/regex/replacement/"
                          "flags\" with flags from i, g, s" % (expr, why))
    if len(expr) < 3:
        raise bad("too short")
    sep = expr[0]
    if sep == "\\":
        raise bad("the separator cannot be a backslash")
    end = 1
    while end < len(expr) and not (expr[end] == sep and expr[end - 1] != "\\"):
        end += 1
    if end >= len(expr):
        raise bad("no separator after the regular expression")
    pattern, p = expr[1:end], end + 1
    parts, literal = [], []
    while True:
        if p >= len(expr):
            raise bad("no separator after the replacement")
        c = expr[p]
        if c == sep:
            break
        if c == "\\" and p + 1 < len(expr):
            e = expr[p + 1]
            p += 2
            if e.isdigit():
                parts.append("".join(literal))
                literal = []
                parts.append(int(e))
            elif e == "u":
                raise bad("\\u (the request URI) has no value in the preprocessor")
            else:
                literal.append({"n": "\n", "r": "\r", "t": "\t"}.get(e, e))
            continue
        literal.append(c)
        p += 1
    parts.append("".join(literal))
    flags = expr[p + 1:]
    for f in flags:
        if f not in "igs":
            raise bad("unknown flag %r" % f)
    regex = compile_ere(pattern, icase="i" in flags, dotall="s" in flags)
    if regex is None:
        raise bad("%r is not a valid regular expression" % pattern)
    return SubstRule(expr, regex, [x for x in parts if x != ""], "g" in flags)
