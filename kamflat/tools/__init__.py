"""The command-line tools: serve, send, check, the fifo and rpc clients, cat/follow, gen.

Every tool exits with one scheme, said here once and printed by each `--help`.
"""
import argparse

EXIT_OK = 0             # done as asked
EXIT_REFUSED = 1        # the server (or, for check and serve, the config) said no, or no answer in time
EXIT_USAGE = 2          # bad arguments, an unreadable input or config file (argparse exits 2 too)
EXIT_UNREACHABLE = 3    # no server behind the FIFO or socket

EXIT_STATUS_HELP = ("exit status: 0 ok; 1 the server said no (an error reply, refused lines, no "
                    "answer in time) or the config was refused; 2 usage error or unreadable "
                    "file; 3 cannot reach the server (FIFO or socket missing or not served)")


def argument_parser(prog, description, usage=None):
    """An ArgumentParser whose --help ends with the exit-status scheme."""
    return argparse.ArgumentParser(prog=prog, description=description, usage=usage,
                                   epilog=EXIT_STATUS_HELP)


def require(parser, value, name):
    """A positional argument followed by optional repeated ones (`CMD [ARG ...]`) is taken
    with nargs="?" and checked here: argparse 3.11 would name the optional ones as required
    too in its error. Such a parser gives its usage line itself, with NAME not bracketed."""
    if value is None:
        parser.error("the following arguments are required: %s" % name)
    return value
