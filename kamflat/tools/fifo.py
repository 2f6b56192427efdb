"""`kamflat fifo`: the classic MI FIFO client, as `kamctl fifo` of Kamailio 3.x.

It sends the bytes kamctl 3.x sends (`:CMD:openser_receiver_<pid>\\nARG\\n...\\n\\n`
in one write, reply FIFO created beforehand) and prints the reply as kamctl
does (a first line starting `200 OK` and every empty line left out). Unlike
kamctl it says by its exit status how it went (the scheme of kamflat/tools/__init__.py:
0 a 2xx reply, 1 an error reply or a timeout, 2 usage, 3 the server FIFO not served).
"""
import os
import sys

from kamflat.proto import mi
from kamflat.tools import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, argument_parser, require
from kamflat.tools.fifoclient import NoReply, ServerUnreachable, exchange

DEFAULT_FIFO = "/tmp/kamailio_fifo"     # kamctl's default FIFO_PATH
DEFAULT_REPLY_DIR = "/tmp/"


def kamctl_output(reply):
    """What kamctl prints: without a first line starting `200 OK`, without empty lines."""
    lines = reply.split(b"\n")
    if lines and lines[0].startswith(b"200 OK"):
        lines = lines[1:]
    return b"".join(line + b"\n" for line in lines if line)


def reply_ok(reply):
    return reply[:1] == b"2" and reply[1:3].isdigit() and reply[3:4] == b" "


def fifo_from_config(path):
    """(fifo_name, reply_dir) of the mi_fifo module in a kamflat/Kamailio config."""
    from kamflat.config.model import load_model       # only needed with -f
    fifo = load_model(path, serving=False).mi_fifo
    return (fifo.path, fifo.reply_dir or DEFAULT_REPLY_DIR) if fifo else (None, None)


def unreachable_hint(fifo):
    return ("** ERROR: Error opening Kamailio's FIFO %s\n"
            "** ERROR: Make sure you have the line 'modparam(\"mi_fifo\", \"fifo_name\", \"%s\")' "
            "in your config\n"
            "** ERROR: and also have loaded the mi_fifo module.\n" % (fifo, fifo))


def parse_args(argv):
    parser = argument_parser(
        "kamflat fifo", "Send one classic MI command over the MI FIFO (like `kamctl fifo`).",
        usage="%(prog)s [-h] [-f FILE | --fifo PATH] [--timeout SECONDS] CMD [ARG ...]")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", dest="config", metavar="FILE",
                       help="config file: use its mi_fifo fifo_name and reply_dir")
    where.add_argument("--fifo", metavar="PATH",
                       help="server FIFO (default %s)" % DEFAULT_FIFO)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the reply (default 10)")
    parser.add_argument("command", metavar="CMD", nargs="?")
    parser.add_argument("args", nargs="*", metavar="ARG")
    opts = parser.parse_args(argv)
    require(parser, opts.command, "CMD")
    return opts


def main(argv):
    opts = parse_args(argv)
    fifo, reply_dir = opts.fifo or DEFAULT_FIFO, DEFAULT_REPLY_DIR
    if opts.config:
        try:
            fifo, reply_dir = fifo_from_config(opts.config)
        except Exception as e:      # ConfigError and OSError say file and line themselves
            print("kamflat fifo: %s" % e, file=sys.stderr)
            return EXIT_USAGE
        if not fifo:
            print('kamflat fifo: %s does not loadmodule "mi_fifo.so"' % opts.config,
                  file=sys.stderr)
            return EXIT_USAGE
    for i, arg in enumerate([opts.command] + opts.args):
        if "\n" in arg:
            print("kamflat fifo: %s %d contains a newline, which the MI FIFO protocol cannot carry"
                  % ("argument" if i else "command", i), file=sys.stderr)
            return EXIT_USAGE
    name = "openser_receiver_%d" % os.getpid()
    request = mi.encode_request(opts.command, name, opts.args)
    try:
        reply = exchange(fifo, request, reply_dir + name, opts.timeout)
    except ServerUnreachable:
        sys.stderr.write(unreachable_hint(fifo))
        return EXIT_UNREACHABLE
    except NoReply as e:
        sys.stdout.buffer.write(kamctl_output(e.partial))
        print("kamflat fifo: %s from %s" % (e, fifo), file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.buffer.write(kamctl_output(reply))
    sys.stdout.flush()
    if not reply:       # the server closes without a word only for `kill`
        return EXIT_OK if opts.command == "kill" else EXIT_REFUSED
    return EXIT_OK if reply_ok(reply) else EXIT_REFUSED
