"""`kamflat send [-f FILE | --socket PATH] [INPUT]`: feed JSON-line records to a server.

Exit status (the scheme of kamflat/tools/__init__.py): 0 when every line was written, 1
when some lines were refused (each is reported as `line N: reason`) or the server stopped
first, 2 for usage errors and unreadable files, 3 when the server cannot be reached.
"""
import sys

from kamflat.client import SendError, ServerUnreachable, send_bytes
from kamflat.tools import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, argument_parser

BLOCK = 1 << 16


def _blocks(stream):
    while True:
        block = stream.read(BLOCK)
        if not block:
            return
        yield block


def socket_path(args):
    """The ingest socket from --socket, or from the config's kamflat ingest_socket."""
    if args.socket:
        return args.socket
    from kamflat.config.model import load_model
    place = load_model(args.config, serving=False).ingest_socket
    if not place:
        raise SendError('%s sets no modparam("kamflat", "ingest_socket", ...)' % args.config)
    return place.path


def main(argv):
    parser = argument_parser("kamflat send", __doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-f", dest="config", metavar="FILE", help="the server's config file")
    where.add_argument("--socket", metavar="PATH", help="the ingest socket")
    parser.add_argument("input", nargs="?", default="-",
                        help="file of JSON lines (default: standard input)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server to answer (default 60)")
    args = parser.parse_args(argv)

    def report(line, message):
        print("line %s: %s" % (line, message), file=sys.stderr)

    stream = sys.stdin.buffer if args.input == "-" else None
    try:
        if stream is None:
            stream = open(args.input, "rb")
    except OSError as exc:
        print("kamflat send: cannot read %s: %s" % (args.input, exc.strerror), file=sys.stderr)
        return EXIT_USAGE
    try:
        result = send_bytes(socket_path(args), _blocks(stream), timeout=args.timeout,
                            on_error=report)
    except Exception as exc:   # SendError, ConfigError: one clear line, no traceback
        print("kamflat send: %s" % exc, file=sys.stderr)
        return exit_status_of(exc)
    finally:
        stream.close()
    state = "server stopped after" if result.stopped else "sent"
    print("%s %d lines: %d written, %d refused" % (state, result.lines, result.written,
                                                    result.error_count), file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_REFUSED


def exit_status_of(exc):
    """What a failed send exits with: 3 when there was no server, 1 when it went wrong
    on the way, 2 for the config or arguments."""
    if isinstance(exc, ServerUnreachable):
        return EXIT_UNREACHABLE
    return EXIT_REFUSED if isinstance(exc, SendError) else EXIT_USAGE
