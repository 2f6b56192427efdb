"""The classic MI FIFO server: Kamailio 3.3's mi_fifo, without its stalls.

IO only: the grammar and reply framing are in `proto/mi.py`, the commands in
`mgmt/mi_commands.py`; the loop and the way from a parsed request to its client's
reply FIFO are `fiforeply.py`'s (shared with the JSON-RPC FIFO: its docstring has the
timeouts and the bounds on the work one client can cause).

- The server FIFO is held open O_RDWR|O_NONBLOCK, so writers coming and going
  never cause EOF churn. Every byte read goes through one `MIParser` (the FIFO is
  one stream shared by all clients; `mi.py` explains how it resyncs).
- Each request becomes a reply job: the command runs only once its reply FIFO is
  open; slow ones (flat_rotate) on a helper thread. Log lines a client can cause are
  rate-limited ("... (N more like this)").
- If the server FIFO is deleted or renamed away, it is recreated at once
  (`fifoio.WatchedFifo`: pyinotify when it is installed, else an os.stat on
  every loop tick).
"""
import logging
import os

from kamflat.proto import mi
from kamflat.server.fifoio import ServerFifo, WatchedFifo
from kamflat.server.fiforeply import FifoServer
from kamflat.mgmt.manage import SLOW
from kamflat.mgmt.mi_commands import MICommands, Reply, flat_rotate_reply

log = logging.getLogger("kamflat.server.mi_fifo")

DEFAULT_MODULES = ("kex", "pv", "db_flatstore", "mi_fifo")


class MIFifoError(Exception):
    """The server FIFO could not be set up; the message names the path."""


class MIFifoServer(FifoServer):
    """mi_fifo: `open()`, `serve(stop_event)`, `close()`; the timeouts are FifoServer's."""

    what = "MI FIFO"
    log = log

    def __init__(self, fifo_name, fifo_mode=0o660, fifo_user=None, fifo_group=None,
                 reply_dir="/tmp/", reply_indent="\t", modules=DEFAULT_MODULES,
                 management=None, **timeouts):
        self.fifo_name = fifo_name
        self.fifo = WatchedFifo(ServerFifo(fifo_name, fifo_mode, fifo_user, fifo_group),
                                log, "MI FIFO")
        self.reply_dir = reply_dir
        self.reply_indent = reply_indent
        self.management = management
        self._stats = getattr(management, "statistics", None)  # None: nothing counts
        self.commands = MICommands(modules, management)
        self.reader = self.parser = mi.MIParser(self.commands.names, self.commands.no_input,
                                                reply_dir)
        super().__init__(on_drop=lambda: self._count("dropped"), **timeouts)

    def open(self):
        """Create the FIFO (replacing whatever is at fifo_name) and get ready to serve."""
        try:
            os.stat(self.reply_dir)
        except OSError as e:
            raise MIFifoError("MI FIFO reply_dir %s: %s" % (self.reply_dir, e.strerror)) from None
        try:
            self.open_fifo()
        except (OSError, KeyError) as e:
            raise MIFifoError("cannot create MI FIFO %s: %s"
                              % (self.fifo_name, getattr(e, "strerror", e))) from None
        if self._stats is not None:   # mi_fifo:requests / errors / dropped, for get_statistics
            for name in ("requests", "errors", "dropped"):
                self._stats.register("mi_fifo", name)
        log.info("MI FIFO listening on %s", self.fifo_name)

    def on_event(self, event):
        if isinstance(event, mi.Request):
            command, args = event.command, event.args
            rotation = None
            if command in SLOW and getattr(self.management, "begin_rotation", None):
                # the loop makes the rotation (fiforeply.py): only its reply is left here
                rotation = (self.management.begin_rotation,
                            lambda errors: self._answer(command, flat_rotate_reply, errors))
            self._submit(event.reply_name, command,
                         lambda: self._answer(command, self.commands.run, command, args),
                         slow=command in SLOW, rotation=rotation)
            return
        self._count("errors" if not isinstance(event, mi.ProtocolDrop) else "dropped")
        if isinstance(event, mi.UnknownCommand):
            self.limited.error("MI FIFO: command %r is not available", event.command)
            reply = mi.command_not_available(event.command)
        elif isinstance(event, mi.ParseError):
            self.limited.error("MI FIFO: parse error in command %r: %s", event.command,
                               event.reason)
            reply = mi.parse_error_reply(event.command)
        else:
            self.limited.warning("MI FIFO: dropped request %r: %s", event.logline, event.reason)
            return
        self._submit(event.reply_name, event.command, lambda: reply)

    def _submit(self, reply_name, command, run, slow=False, rotation=None):
        self.jobs.submit(self.reply_dir + reply_name, command, run, slow, rotation)

    def _answer(self, command, run, *args):
        """Run a command (its reply FIFO is open now) by calling run(*args): the reply
        bytes, or CloseThen."""
        self._count("requests")
        try:
            result = run(*args)
        except Exception:
            log.exception("MI FIFO: command %r failed", command)
            result = None
        if result is None:
            data = mi.command_failed(command)
        elif isinstance(result, Reply):
            data = mi.encode_reply(result.code, result.reason, result.nodes, self.reply_indent)
        elif isinstance(result, bytes):
            data = result
        else:
            return result           # MI kill: 0 bytes, then stop (fiforeply does it)
        if data[:1] != b"2":
            self._count("errors")
        return data

    def _count(self, name):
        if self._stats is not None:
            self._stats.add("mi_fifo", name, 1)
