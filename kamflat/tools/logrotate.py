"""`kamflat logrotate -f FILE [--kamflat PATH]`: print a logrotate policy for a config.

logrotate runs its postrotate scripts from cron or a systemd timer, whose PATH does not
hold a virtualenv's bin directory: a policy that says just `kamflat` fails there after the
files were renamed, and the writers never reopen. So the policy names kamflat by its
absolute path, the one of the command printing it unless --kamflat says otherwise, and
takes the acc directory and the FIFO from the config. conf/logrotate.d/kamflat is this
policy for conf/kamflat.cfg (a test keeps them the same).
"""
import os
import shutil
import sys

from kamflat.tools import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, argument_parser

POLICY = """\
# logrotate policy for kamflat's acc files, made by `kamflat logrotate -f {config}`.
# Install as /etc/logrotate.d/kamflat.
#
# kamflat answers the rotation only once every writer has closed its files, so the
# rotated files are complete when postrotate returns: compressing them at once is safe
# (with Kamailio you would need delaycompress). kamflat is named by its absolute path:
# cron's PATH does not hold a virtualenv.
{acc_dir}/*.log {{
    daily
    rotate 30
    missingok
    notifempty
    # kamflat opens a table's file again on the next record, in append mode:
    # no need for logrotate to create it.
    nocreate
    compress
    sharedscripts
    postrotate
        {rotate}
    endscript
}}
"""


def own_path():
    """The absolute path of this kamflat: the console script beside this Python if there
    is one (a virtualenv's bin/kamflat), else this Python running the package."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "kamflat")
    if os.access(script, os.X_OK):
        return script
    found = shutil.which("kamflat")
    return os.path.abspath(found) if found else "%s -m kamflat" % os.path.abspath(sys.executable)


def rotate_command(kamflat, mi_fifo, rpc_fifo):
    """The postrotate line: the classic MI FIFO if the config has one, else JSON-RPC."""
    if mi_fifo:
        return "%s fifo --fifo %s flat_rotate" % (kamflat, mi_fifo)
    if rpc_fifo:
        return "%s rpc --fifo %s flatstore.rotate" % (kamflat, rpc_fifo)
    return None


def policy(config_name, acc_dir, rotate):
    return POLICY.format(config=config_name, acc_dir=acc_dir.rstrip("/"), rotate=rotate)


def main(argv):
    parser = argument_parser("kamflat logrotate", "Print a logrotate policy for the acc files "
                             "of a config, naming kamflat by its absolute path.")
    parser.add_argument("-f", dest="config", required=True, metavar="FILE",
                        help="the server's config: its acc directory and FIFO")
    parser.add_argument("-A", dest="defines", action="append", default=[],
                        metavar="NAME[=VALUE]", help="#!define NAME before reading (repeatable)")
    parser.add_argument("--kamflat", metavar="PATH", default=None,
                        help="the kamflat command the policy runs (default: this one, %s)"
                        % own_path())
    args = parser.parse_args(argv)
    from kamflat.config.model import ConfigError, load_model
    try:
        model = load_model(args.config, args.defines)
    except (ConfigError, OSError) as exc:
        print("kamflat logrotate: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    rotate = rotate_command(args.kamflat or own_path(),
                            model.mi_fifo and model.mi_fifo.path,
                            model.jsonrpc_fifo and model.jsonrpc_fifo.path)
    if rotate is None:
        print("kamflat logrotate: %s has neither an MI FIFO (mi_fifo) nor a JSON-RPC FIFO "
              "(jsonrpcs): nothing could tell kamflat to rotate" % args.config, file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(policy(args.config, model.db_dir, rotate))
    return EXIT_OK
