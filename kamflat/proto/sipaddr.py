"""Kamailio's parser for name-addr (From/To bodies), as a pure function.

acc's output depends on exactly which From/To/URI values Kamailio 5.6 accepts: a From
header its parser rejects means *no* record at all, a From URI it rejects means empty
$fU/$fd. So these follow the state machines of Kamailio's core parser
(parser/parse_addr_spec.c) transition by transition, including its quirks (a backslash
anywhere in the To/From parameters is an error). Only what acc needs is kept: the
display name, the URI and the tag. URIs are in sipuri.py.
"""
import re
from typing import NamedTuple

from kamflat.proto.sipuri import AddrError, memoised


class NameAddr(NamedTuple):
    display: str      # as written, quotes kept ("" when absent)
    uri: str
    tag: str          # "" when absent or empty


# --- name-addr (parse_addr_spec.c) ------------------------------------------------

(START_TO, DISPLAY_QUOTED, E_DISPLAY_QUOTED, DISPLAY_TOKEN, DISPLAY_TOKEN_SP,
 S_URI_ENCLOSED, URI_ENCLOSED, E_URI_ENCLOSED, URI_OR_TOKEN, MAYBE_URI_END, END,
 F_CR, F_LF, F_CRLF) = range(14)
(S_PARA_NAME, PARA_NAME, S_EQUAL, S_PARA_VALUE, TAG1, TAG2, TAG3, PARA_VALUE_TOKEN,
 PARA_VALUE_QUOTED, E_PARA_VALUE) = range(20, 30)
FOLD = (F_CR, F_LF, F_CRLF)


def _bad(c, status, buf, i):
    return AddrError("unexpected char %r in state %d at offset %d of %r" % (c, status, i, buf))


# Fast path: the shapes nearly all traffic has, matched by a regex whose every
# accepted input the state machine below accepts with the same result (checked by a
# property test in tests/test_sip.py). Anything else takes the state machine.
# Possessive everywhere, so a failing match never backtracks (linear in the input);
# a token display name is taken up to the '<' and its trailing blanks cut in Python.
_NAME_ADDR_FAST = re.compile(
    r'(?:("[^"\\\r\n\0]*+")[ \t]*+|([^"\\<>;\r\n\0]*+))'                # display name
    r'<([^ \t\r\n\\<>"\0;][^ \t\r\n\\<>"\0]*+)>[ \t]*+'                  # <uri>
    r'((?:;[^;=,"\\ \t\r\n\0]++(?:=[^;=,"\\ \t\r\n\0]*+)?+)*+)\Z')    # ;params


def _parse_name_addr(value):
    """Parse a From/To header body the way Kamailio's parse_to() does.

    `value` is the header body (folding kept); returns NameAddr or raises AddrError.
    """
    fast = _fast(value)
    if fast is None:
        return _parse_name_addr_slow(value)
    display, uri, params = fast
    tag = ""
    if params:
        for param in params[1:].split(";"):
            name, _, pvalue = param.partition("=")
            if name.lower() == "tag":
                tag = pvalue
    return _new_name_addr(NameAddr, (display, uri, tag))


def _fast(value):
    """(display, URI, ;params) of a name-addr the fast path takes, else None."""
    m = _NAME_ADDR_FAST.match(value)
    if m is None:
        return None
    quoted, token, uri, params = m.groups()
    return quoted or (token.rstrip(" \t") if token else ""), uri, params


def _parse_head(head):
    """(display, URI) of a name-addr the fast path takes, else False."""
    fast = _fast(head)
    return fast[:2] if fast else False


_parse_seen = memoised(_parse_name_addr)
_head_seen = memoised(_parse_head)
# A tag the fast path takes (see _NAME_ADDR_FAST's params).
_TAG_VALUE = re.compile(r'[^;=,"\\ \t\r\n\0]*+\Z')


def parse_name_addr(value):
    """_parse_name_addr() with bounded memos: the same To comes again and again; a From
    (or a To in a dialog) comes again with a new tag, so when a value ends in a
    ';tag=' the fast path takes, the part before it is what is memoised. (Whatever
    parameters come before, the fast path's tag is the last one, and a value it takes
    stays one it takes with one more such parameter.)"""
    head, sep, tag = value.rpartition(";tag=")
    if sep and _TAG_VALUE.match(tag):
        known = _head_seen(head)
        if known:
            return _new_name_addr(NameAddr, (known[0], known[1], tag))
    return _parse_seen(value)


_new_name_addr = tuple.__new__     # NameAddr(...) without the Python-level __new__


def _parse_name_addr_slow(value):
    """parse_addr_spec()'s state machine (parser/parse_addr_spec.c), transition by
    transition: display name, URI, then the parameters (_parse_params)."""
    buf = value + "\r\n"          # the parser sees the line end that follows the body
    end = len(buf)
    status = saved = START_TO
    foo = 0
    display_s = display_len = 0
    uri_s = uri_len = 0
    tag = ""
    i = 0
    while i < end:
        c = buf[i]
        if c == " " or c == "\t":
            if status in FOLD:
                status = saved
            elif status == URI_ENCLOSED:
                uri_len = i - uri_s
                status = E_URI_ENCLOSED
            elif status == URI_OR_TOKEN:
                foo = i
                status = MAYBE_URI_END
            elif status == DISPLAY_TOKEN:
                foo = i
                status = DISPLAY_TOKEN_SP
        elif c == "\n" or c == "\r":
            if status == URI_OR_TOKEN:
                foo = i
                status = MAYBE_URI_END
            if status in (MAYBE_URI_END, DISPLAY_TOKEN_SP, E_DISPLAY_QUOTED, END):
                saved = status
                status = F_LF if c == "\n" else F_CR
            elif status == DISPLAY_TOKEN:
                foo = i
                saved = DISPLAY_TOKEN_SP
                status = F_LF if c == "\n" else F_CR
            elif status == F_CR and c == "\n":
                status = F_CRLF
            elif status in FOLD:
                status = saved
                break
            else:
                raise _bad(c, status, value, i)
        elif c == "\0":
            if status in (URI_OR_TOKEN, MAYBE_URI_END):
                uri_len = i - uri_s
                status = END
            if status != END:
                raise _bad(c, status, value, i)
            saved = END
            break
        elif c == "\\":
            if status != DISPLAY_QUOTED:
                raise _bad(c, status, value, i)
            i += 1                            # the escaped char is skipped unseen
        elif c == "<":
            if status == START_TO or status == E_DISPLAY_QUOTED:
                status = S_URI_ENCLOSED
            elif status in (URI_OR_TOKEN, DISPLAY_TOKEN):
                display_len = i - display_s
                status = S_URI_ENCLOSED
            elif status in (DISPLAY_TOKEN_SP, MAYBE_URI_END):
                display_len = foo - display_s
                status = S_URI_ENCLOSED
            elif status in FOLD:
                break
            elif status != DISPLAY_QUOTED:
                raise _bad(c, status, value, i)
        elif c == ">":
            if status == URI_ENCLOSED:
                uri_len = i - uri_s
                status = END
                foo = 0
            elif status == E_URI_ENCLOSED:
                status = END
                foo = 0
            elif status in FOLD:
                break
            elif status != DISPLAY_QUOTED:
                raise _bad(c, status, value, i)
        elif c == '"':
            if status == START_TO:
                display_s = i
                status = DISPLAY_QUOTED
            elif status == DISPLAY_QUOTED:
                status = E_DISPLAY_QUOTED
                display_len = i - display_s + 1
            elif status in FOLD:
                break
            else:
                raise _bad(c, status, value, i)
        elif c == ";":
            if status in (DISPLAY_QUOTED, URI_ENCLOSED):
                pass
            elif status in (URI_OR_TOKEN, MAYBE_URI_END, END):
                if status == URI_OR_TOKEN:
                    foo = i
                if status != END:
                    uri_len = foo - uri_s
                i, saved, tag = _parse_params(buf, i, value)
                break
            elif status in FOLD:
                break
            else:
                raise _bad(c, status, value, i)
        else:   # any other char (',' too: From/To do not allow comma separation)
            if status == START_TO:
                uri_s = display_s = i
                status = URI_OR_TOKEN
            elif status == S_URI_ENCLOSED:
                uri_s = i
                status = URI_ENCLOSED
            elif status in (MAYBE_URI_END, DISPLAY_TOKEN_SP):
                status = DISPLAY_TOKEN
            elif status in (DISPLAY_QUOTED, DISPLAY_TOKEN, URI_ENCLOSED, URI_OR_TOKEN):
                pass
            elif status in FOLD:
                break
            else:
                raise _bad(c, status, value, i)
        i += 1
    else:
        if status in (URI_OR_TOKEN, MAYBE_URI_END, END):
            saved = status
            foo = i
    if saved in (URI_OR_TOKEN, MAYBE_URI_END):
        uri_len = foo - uri_s
    elif saved not in (END, E_PARA_VALUE):
        raise AddrError("unexpected end of header in state %d: %r" % (saved, value))
    display = buf[display_s:display_s + display_len] if display_len else ""
    return NameAddr(display, buf[uri_s:uri_s + uri_len], tag)


def _parse_params(buf, i, value):
    """parse_to_param() of parser/parse_addr_spec.c, transliterated: the ;name=value
    list after a name-addr. Returns (i, status, tag)."""
    end = len(buf)
    status = saved = E_PARA_VALUE
    tag = ""
    value_s = value_e = 0
    is_tag = False

    def err(c):
        return _bad(c, status, value, i)

    while i < end:
        c = buf[i]
        lc = c.lower()
        add = False                     # a parameter is complete: remember it if a tag
        if c == " " or c == "\t":
            if status in (TAG3, PARA_NAME, TAG1, TAG2):
                is_tag = status == TAG3
                status = S_EQUAL
            elif status == PARA_VALUE_TOKEN:
                value_e = i
                status = E_PARA_VALUE
                add = True
            elif status in FOLD:
                status = saved
        elif c == "\n" or c == "\r":
            fold = F_LF if c == "\n" else F_CR
            if status in (S_PARA_NAME, S_EQUAL, S_PARA_VALUE, E_PARA_VALUE):
                saved = status
                status = fold
            elif status in (TAG3, PARA_NAME, TAG1, TAG2):
                is_tag = status == TAG3
                saved = S_EQUAL
                status = fold
            elif status == PARA_VALUE_TOKEN:
                value_e = i
                saved = E_PARA_VALUE
                status = fold
                add = True
            elif status == F_CR and c == "\n":
                status = F_CRLF
            elif status in FOLD:
                status = saved
                break
            else:
                raise err(c)
        elif c == "\0":
            raise err(c)                  # never in a decoded datagram we accept
        elif c == "\\":
            raise err(c)                  # Kamailio rejects it even inside quotes
        elif c == '"':
            if status == S_PARA_VALUE:
                value_s = i + 1
                status = PARA_VALUE_QUOTED
            elif status == PARA_VALUE_QUOTED:
                value_e = i
                add = True
                status = E_PARA_VALUE
            elif status in FOLD:
                break
            else:
                raise err(c)
        elif c == ";":
            if status == PARA_VALUE_QUOTED:
                pass
            elif status in (TAG3, PARA_NAME, TAG1, TAG2, S_EQUAL, S_PARA_VALUE,
                            PARA_VALUE_TOKEN, E_PARA_VALUE):
                if status in (TAG3, PARA_NAME, TAG1, TAG2, S_EQUAL):
                    if status == TAG3:
                        is_tag = True
                    value_s = value_e = i        # no '=': empty value
                    add = True
                elif status in (S_PARA_VALUE, PARA_VALUE_TOKEN):
                    if status == S_PARA_VALUE:
                        value_s = i
                    value_e = i
                    add = True
                if add and is_tag:
                    tag = buf[value_s:value_e]
                add = False
                is_tag = False
                status = S_PARA_NAME
            elif status in FOLD:
                break
            else:
                raise err(c)
        elif c == "=":
            if status == PARA_VALUE_QUOTED:
                pass
            elif status in (TAG3, PARA_NAME, TAG1, TAG2, S_EQUAL):
                if status == TAG3:
                    is_tag = True
                status = S_PARA_VALUE
            elif status in FOLD:
                break
            else:
                raise err(c)
        elif c == "," and status in (S_PARA_VALUE, PARA_VALUE_TOKEN) and is_tag:
            pass                           # some agents put commas in tags
        elif c == "," and status == PARA_VALUE_QUOTED:
            pass
        elif lc in ("t", "a", "g") and status in (S_PARA_NAME, TAG1, TAG2, TAG3):
            if status == S_PARA_NAME:
                status = TAG1 if lc == "t" else PARA_NAME
            elif status == TAG1 and lc == "a":
                status = TAG2
            elif status == TAG2 and lc == "g":
                status = TAG3
            else:
                status = PARA_NAME
        else:
            if status in (TAG1, TAG2, TAG3):
                status = PARA_NAME
            elif status in (PARA_VALUE_TOKEN, PARA_NAME, PARA_VALUE_QUOTED):
                pass
            elif status == S_PARA_NAME:
                status = PARA_NAME
            elif status == S_PARA_VALUE:
                value_s = i
                status = PARA_VALUE_TOKEN
            elif status in FOLD:
                break
            else:
                raise err(c)
        if add and is_tag:
            tag = buf[value_s:value_e]
        i += 1
    else:
        if status not in FOLD:
            saved = status
    if saved in (TAG3, PARA_NAME, TAG1, TAG2, S_EQUAL):
        if saved == TAG3 or (saved == S_EQUAL and is_tag):
            tag = ""
    elif saved == S_PARA_VALUE:
        if is_tag:
            tag = ""
    elif saved == PARA_VALUE_TOKEN:
        if is_tag:
            tag = buf[value_s:i]
    elif saved != E_PARA_VALUE:
        raise AddrError("unexpected end of header in state %d: %r" % (saved, value))
    return i, E_PARA_VALUE, tag
