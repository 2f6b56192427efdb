"""Typed values of config statements: what a modparam value or a global may be.

The checks Kamailio's modparam makes on a value's type (core/modparam.c) and the
ones an emulated module's mod_init adds, and the helpers that turn tokens back into
values or text. Used by cfg.py's parser.

Pure: no IO.
"""
from kamflat.config import modparams
from kamflat.config.modparams import INT, STR
from kamflat.config.preproc import ConfigError

INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1


def describe(token):
    if token is None:
        return "the end of the file"
    if token.kind == "str":
        return "the string %s" % token.text if len(token.text) < 60 else "a string"
    return repr(token.text)



def check_value(module, param, value, declared, token, config):
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
    if module == "pv" and param in ("shvset", "varset") and split_xvar(value) is None:
        raise ConfigError('modparam("pv", "%s", %s): expected "name=s:text" or '
                          '"name=i:number"' % (param, token.text), *where)



def split_xvar(value):
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



def as_written(tokens, string_values=True):
    """Tokens back to text, spaced as they were; strings by value or as written."""
    out = []
    for t in tokens:
        if out and t.space_before:
            out.append(" ")
        out.append(t.value if t.kind == "str" and string_values else t.text)
    return "".join(out)



def int_value(tokens):
    if len(tokens) == 1 and tokens[0].kind == "num":
        return tokens[0].value
    if len(tokens) == 2 and tokens[0].text == "-" and tokens[1].kind == "num":
        return -tokens[1].value
    return None



def plain_value(tokens):
    """A global's value: an int, a string's text, or the tokens as written."""
    number = int_value(tokens)
    if number is not None:
        return number
    if len(tokens) == 1 and tokens[0].kind == "str":
        return tokens[0].value
    return as_written(tokens, string_values=False)
