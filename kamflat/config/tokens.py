"""What the preprocessor hands on: tokens (and how a word becomes one), the error
type, and the default file reader.

`ConfigError` is the one error of every config layer (preprocessor, cfg reader, the
resolved model); `Token` and `Preprocessed` are preproc.py's output; `read_text_file` is
the only IO of the config layer, passed in by the caller.
"""
import re
from dataclasses import dataclass, field

YES_WORDS = {"yes": 1, "true": 1, "on": 1, "enable": 1,
             "no": 0, "false": 0, "off": 0, "disable": 0}

NUMBER_FORMS = (  # (pattern, base) in cfg.lex order: the first full match wins
    (re.compile(r"0x[0-9a-fA-F]+\Z"), 16),
    (re.compile(r"0[0-7]+\Z"), 8),
    (re.compile(r"[01]+b\Z"), 2),
    (re.compile(r"(0|[1-9][0-9]*)\Z"), 10),
)


class ConfigError(Exception):
    """A config that kamflat (or Kamailio) cannot use. str() is `FILE:LINE: message`."""

    def __init__(self, message, file=None, line=None):
        super().__init__(message)
        self.message, self.file, self.line = message, file, line

    def __str__(self):
        if self.file is None:
            return self.message
        if self.line is None:
            return "%s: %s" % (self.file, self.message)
        return "%s:%d: %s" % (self.file, self.line, self.message)


@dataclass(frozen=True)
class Token:
    """One token of the config after preprocessing.

    kind: "id" (name), "num" (value is an int), "str" (value is the decoded text),
    "pvar" ($var...), "word" (starts with a digit but is no number, e.g. 5060abc)
    or "punct" (one character). `text` is the token as written.
    """

    kind: str
    value: object
    text: str
    file: str
    line: int
    end_line: int
    newline_before: bool   # a line ended between the previous token and this one
    space_before: bool

    @property
    def where(self):
        return "%s:%d" % (self.file, self.line)


@dataclass
class Preprocessed:
    tokens: list
    defines: dict            # name -> value as written ("" when defined without one)
    warnings: list           # "FILE:LINE: message"
    compat: str = None       # KAMAILIO, OPENSER, SER, MAXCOMPAT, ALL or None
    files: list = field(default_factory=list)   # every file read, in order


def read_text_file(path):
    """The default `read_file`: a config file's text (bad UTF-8 bytes become U+FFFD)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def word_token(word):
    """(kind, value, text) of a word: a number in one of cfg.lex's forms, yes/no, or a name."""
    for pattern, base in NUMBER_FORMS:
        if pattern.match(word):
            return ("num", int(word.rstrip("b") if base == 2 else word, base), word)
    if word in YES_WORDS:
        return ("num", YES_WORDS[word], word)
    if word[0].isdigit():
        return ("word", word, word)
    return ("id", word, word)
