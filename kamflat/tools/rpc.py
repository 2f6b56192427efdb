"""`kamflat rpc [-f FILE | --fifo PATH] METHOD [PARAM...]`: a JSON-RPC FIFO client.

Sends what `kamctl rpc` 5.6 sends (one line, reply FIFO /tmp/kamailio_receiver_<pid>,
id = pid) and prints the reply document. Unlike kamctl it opens its reply FIFO before
sending (so the server never has to wait for it), escapes string parameters properly,
gives up after --timeout seconds, and says by its exit status how it went (the scheme
of kamflat/tools/__init__.py): 0 result, 1 error reply or no reply, 2 usage, 3 server FIFO
missing or not served.
"""
import json
import os
import re
import sys

from kamflat.tools import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, argument_parser, require
from kamflat.tools.fifoclient import NoReply, ServerUnreachable, exchange

DEFAULT_FIFOS = ("/var/run/kamailio/kamailio_rpc.fifo", "/run/kamailio/kamailio_rpc.fifo")
NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def param_json(arg):
    """A command-line parameter as kamctl puts it in the request: `s:` forces a
    string, `i:` an integer, a number stays a bare number, the rest is a string."""
    if arg.startswith("s:"):
        return json.dumps(arg[2:], ensure_ascii=False)
    if arg.startswith("i:"):
        return str(int(arg[2:]))
    if NUMBER.fullmatch(arg):
        return arg
    return json.dumps(arg, ensure_ascii=False)


def build_request(method, params, reply_name, ident):
    """The request line, byte for byte as kamctl 5.6 builds it for plain arguments."""
    text = '{"jsonrpc": "2.0", "method": %s' % json.dumps(method, ensure_ascii=False)
    if params:
        text += ', "params": [%s]' % ", ".join(param_json(p) for p in params)
    text += ', "reply_name": "%s", "id": %d}\n' % (reply_name, ident)
    return text.encode("utf-8")


def fifo_from_config(path):
    """(server FIFO, reply dir) that a kamflat/Kamailio config sets for jsonrpcs."""
    from kamflat.config.model import ConfigError, load_model   # late: only -f needs it
    fifo = load_model(path, serving=False).jsonrpc_fifo
    if fifo is None:
        raise ConfigError("loads no jsonrpcs with its FIFO transport", path)
    return fifo.path, fifo.reply_dir


def default_fifo():
    for path in DEFAULT_FIFOS:
        if os.path.exists(path):
            return path
    return DEFAULT_FIFOS[-1]


def call(fifo, request_for, reply_dir="/tmp/", timeout=10.0):
    """Send one request and return the reply bytes (what came, b"" if none, in time).

    `request_for(reply_name, id)` builds the request bytes. Raises ServerUnreachable
    when the server FIFO is missing or nobody serves it.
    """
    pid = os.getpid()
    reply_name = "kamailio_receiver_%d" % pid
    try:
        return exchange(fifo, request_for(reply_name, pid), os.path.join(reply_dir, reply_name),
                        timeout)
    except NoReply as exc:
        return exc.partial


def main(argv):
    parser = argument_parser("kamflat rpc", "Send one JSON-RPC request over the jsonrpcs "
                             "FIFO (like `kamctl rpc`) and print the reply.",
                             usage="%(prog)s [-h] [-f FILE | --fifo PATH] [--timeout TIMEOUT] "
                                   "method [PARAM ...]")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", dest="config", metavar="FILE",
                       help="take jsonrpcs fifo_name and fifo_reply_dir from this config")
    where.add_argument("--fifo", metavar="PATH", help="the server FIFO (default: %s)"
                       % " or ".join(DEFAULT_FIFOS))
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the reply (default 10)")
    parser.add_argument("method", nargs="?")
    parser.add_argument("params", nargs="*", metavar="PARAM",
                        help="s:TEXT forces a string, i:N an integer")
    args = parser.parse_args(argv)
    require(parser, args.method, "method")
    reply_dir = "/tmp/"
    if args.config:
        try:
            fifo, reply_dir = fifo_from_config(args.config)
        except Exception as exc:        # ConfigError, missing file, ...
            print("kamflat rpc: %s" % exc, file=sys.stderr)
            return EXIT_USAGE
    else:
        fifo = args.fifo or default_fifo()
    try:
        reply = call(fifo, lambda name, ident: build_request(args.method, args.params,
                                                              name, ident),
                     reply_dir, args.timeout)
    except ServerUnreachable as exc:
        print("kamflat rpc: %s" % exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except ValueError as exc:           # i:abc
        print("kamflat rpc: bad parameter: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    if not reply:
        print("kamflat rpc: no reply from %s within %gs" % (fifo, args.timeout),
              file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
    try:
        doc = json.loads(reply)
    except ValueError:
        return EXIT_REFUSED
    return EXIT_OK if isinstance(doc, dict) and "result" in doc else EXIT_REFUSED
