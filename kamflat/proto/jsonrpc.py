"""JSON-RPC over a FIFO as Kamailio 5.6's jsonrpcs module speaks it (pure: no IO).

Three parts, h11 style:

* `FifoStream` (in `jsonstream.py`, re-exported here) cuts the server FIFO's byte
  stream into documents; its docstring has the resynchronisation rules, the way
  kamflat keeps one client's garbage away from the next client's request.
* `parse_request` validates one document the way jsonrpcs does.
* `encode_reply` prints a reply byte for byte like Kamailio's srjson pretty printer
  (tab indentation, `:<TAB>` after keys, no trailing newline, cJSON number printing).
"""
import json
import math
import re
from dataclasses import dataclass

# jsonrpcs took its reply FIFO name rules (forbidden characters, length) from mi_fifo
from kamflat.proto.mi import check_reply_name
from kamflat.proto.jsonstream import (MAX_DOCUMENT, Document, FifoStream, Rejected,  # noqa: F401
                                      recover_reply_target)
from kamflat.proto.sansio import NEED_DATA  # noqa: F401


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class Request:
    """A valid request. `method` is None when the document had none (Kamailio then
    answers an empty success result)."""

    method: str | None
    params: list
    reply_name: str
    id: object = None
    has_id: bool = False


@dataclass(frozen=True)
class Invalid:
    """A document that gets no normal answer. `reply_name`/`id` are set when an
    error reply can still be sent (kamflat's choice for unparsable JSON); `error`
    is then the (code, message) to send."""

    reason: str
    reply_name: str | None = None
    id: object = None
    has_id: bool = False
    error: tuple | None = None


def _lookup(pairs, key):
    """srjson's object lookup: first member whose name matches case-insensitively."""
    key = key.lower()
    for name, value in pairs:
        if name.lower() == key:
            return True, value
    return False, None


def _pairs_to_values(value):
    """Turn the object_pairs_hook lists back into plain values (first key wins)."""
    if isinstance(value, _Pairs):
        out = {}
        for k, v in value:
            out.setdefault(k, _pairs_to_values(v))
        return out
    if isinstance(value, list):
        return [_pairs_to_values(v) for v in value]
    return value


class _Pairs(list):
    pass


def parse_request(data, reply_dir="/tmp/"):
    """Validate one document as jsonrpcs does. Returns Request or Invalid."""
    try:
        # strict=False: srjson takes raw control characters inside strings
        root = json.loads(data, object_pairs_hook=_Pairs, strict=False)
    except (ValueError, RecursionError) as exc:
        name, ident, has_id = recover_reply_target(data)
        return Invalid("invalid JSON document: %s" % exc, name, ident, has_id,
                       (-32700, None))
    if not isinstance(root, _Pairs):
        return Invalid("JSON document is not an object")
    found, version = _lookup(root, "jsonrpc")
    if not found:
        return Invalid("missing jsonrpc field in request")
    if version != "2.0":
        return Invalid("unsupported jsonrpc version %s" % json.dumps(_pairs_to_values(version)))
    found, reply_name = _lookup(root, "reply_name")
    if not found or not isinstance(reply_name, str) or not reply_name:
        return Invalid("missing reply_name in request (nowhere to send the reply)")
    problem = check_reply_name(reply_name, reply_dir)
    if problem:
        return Invalid(problem)
    has_id, ident = _lookup(root, "id")
    ident = _pairs_to_values(ident)
    found, method = _lookup(root, "method")
    if not isinstance(method, str):
        method = None
    found, params = _lookup(root, "params")
    if isinstance(params, _Pairs):
        params = [v for _k, v in params]       # names ignored, values in order
    elif not isinstance(params, list):
        params = []
    return Request(method, [_pairs_to_values(p) for p in params], reply_name,
                   reply_id(ident) if has_id else None, has_id)


def reply_id(ident):
    """The id echoed in the reply: strings as they are, anything else as srjson's
    number value (null and false -> 0, true -> 1, objects/arrays -> 0)."""
    if isinstance(ident, str):
        return ident
    if isinstance(ident, bool):
        return int(ident)
    if isinstance(ident, (int, float)):
        return ident
    return 0


# ---------------------------------------------------------------- replies

ERROR_MESSAGES = {
    -32700: "Parse Error",
    -32600: "Invalid Request",
    -32601: "Method Not Found",
    -32602: "Invalid Parameters",
    -32603: "Internal Error",
    -32000: "Execution Error",
}


def error_object(code, message):
    """Kamailio's error member: table codes get the table's text, others their own."""
    return {"code": code, "message": ERROR_MESSAGES.get(code, message or "Unexpected Error")}


def encode_reply(result=None, error=None, id=None, has_id=False, formatted=True):
    """The reply document exactly as jsonrpcs prints it (bytes, no trailing newline).

    Give either `result` (any JSON value) or `error` (a dict from `error_object`).
    `formatted=False` is jsonrpcs' `pretty_format 0` (srjson_PrintUnformatted).
    """
    reply = {"jsonrpc": "2.0"}
    if error is not None:
        reply["error"] = error
    else:
        reply["result"] = {} if result is None else result
    if has_id:
        reply["id"] = id
    return (pretty(reply) if formatted else compact(reply)).encode("utf-8")


def pretty(value, depth=0):
    """srjson_Print: cJSON's formatted output."""
    if isinstance(value, dict) or is_struct(value):
        depth += 1
        members = value.items() if isinstance(value, dict) else value
        if not value:
            return "{\n" + "\t" * (depth - 1) + "}"
        inner = ",\n".join("\t" * depth + _string(str(k)) + ":\t" + pretty(v, depth)
                           for k, v in members)
        return "{\n" + inner + "\n" + "\t" * (depth - 1) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(pretty(v, depth + 1) for v in value) + "]"
    return _scalar(value)


def compact(value):
    """srjson_PrintUnformatted: no blanks at all."""
    if isinstance(value, dict) or is_struct(value):
        members = value.items() if isinstance(value, dict) else value
        return "{" + ",".join(_string(str(k)) + ":" + compact(v) for k, v in members) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value):
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return number(value)


def is_struct(value):
    """A struct given as (name, value) pairs, which may repeat a name (rpc_commands.Struct)."""
    return getattr(value, "struct_pairs", False)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _string(s):
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), "\\u%04x" % ord(m.group())),
                                   s) + '"'


INT_MIN, INT_MAX = -2 ** 31, 2 ** 31 - 1


def number(value):
    """cJSON print_number: C int range as %d, whole doubles %.0f, else %e or %f."""
    d = float(value)
    if math.isnan(d) or math.isinf(d):
        return "%f" % d          # what printf gives; not valid JSON, as in Kamailio
    if INT_MIN <= d <= INT_MAX and abs(int(d) - d) <= 2.220446049250313e-16:
        return "%d" % int(d)
    if abs(math.floor(d) - d) <= 2.220446049250313e-16:
        return "%.0f" % d
    if abs(d) < 1.0e-6 or abs(d) > 1.0e9:
        return "%e" % d
    return "%f" % d
