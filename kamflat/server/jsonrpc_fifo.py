"""The JSON-RPC FIFO server (Kamailio's jsonrpcs FIFO transport): IO around jsonrpc.py.

The loop, the reply jobs and their timeouts are `fiforeply.py`'s, shared with the MI
FIFO: one non-blocking loop reads the server FIFO (opened O_RDWR so it never sees
EOF), cuts the stream into documents (`jsonrpc.FifoStream`, whose docstring has the
resynchronisation rules) and turns each valid request into a reply job. A job first
opens the client's reply FIFO, retrying for up to `reply_open_wait` seconds while no
reader has it open yet (kamctl starts its `cat` after writing the request); only
then does the command run, so a request whose reply FIFO never opens does not run at
all; a slow one (a rotation) runs on a helper thread meanwhile. A reader that stops
reading is given up after `reply_write_timeout`. A rejected document whose
`reply_name` could be recovered gets an error reply. If the server FIFO is deleted or
renamed away, it is recreated at once, as the MI FIFO's is (`fifoio.WatchedFifo`;
Kamailio's jsonrpcs creates it only at startup).
"""
import errno
import logging
import os
import stat

from kamflat.proto import jsonrpc
from kamflat.server.fifoio import ServerFifo, WatchedFifo
from kamflat.server.fiforeply import FifoServer
from kamflat.mgmt.manage import SLOW
from kamflat.mgmt.rpc_commands import Params, RpcCommands, RpcFault

log = logging.getLogger("kamflat.proto.jsonrpc")
# a pipe larger than any valid document (8190 bytes and leftover blanks): a read
# boundary inside one document written at once never falls where stream rule 4 looks
PIPE_SIZE = 16384


def answer(request, commands, formatted=True, rotated=None):
    """Run one valid request. Returns (reply bytes, error line to log or None).
    rotated: the errors of the rotation this server made for a rotation method."""
    ident = dict(id=request.id, has_id=request.has_id, formatted=formatted)
    if request.method is None:
        return jsonrpc.encode_reply(result={}, **ident), "missing jsonrpc method field in request"
    method = commands.lookup(request.method)
    if method is None:
        return (jsonrpc.encode_reply(error=jsonrpc.error_object(500, "Method Not Found"),
                                     **ident),
                "method callback not found [%s]" % request.method)
    try:
        if rotated is None:
            reply = commands.call(method, Params(request.params, "json"))
        else:
            reply = commands.rotation_reply(method, rotated)
    except RpcFault as fault:
        return jsonrpc.encode_reply(error=jsonrpc.error_object(fault.code, fault.message),
                                    **ident), None
    except Exception as exc:    # a bug in a command must not take the server down
        log.exception("jsonrpc: %s failed", request.method)
        return (jsonrpc.encode_reply(error=jsonrpc.error_object(500, "Internal Server Error: %s"
                                                                % exc), **ident), None)
    return jsonrpc.encode_reply(result=reply.json_result(), **ident), None


class JsonRpcFifoServer(FifoServer):
    """jsonrpcs' FIFO transport: `open()`, `serve(stop_event)`, `close()`; the timeouts
    are FifoServer's."""

    what = "jsonrpc fifo"
    log = log

    def __init__(self, fifo_name, fifo_mode=0o660, fifo_user=None, fifo_group=None,
                 reply_dir="/tmp/", management=None, *, pretty_format=1, **timeouts):
        self.fifo_name = fifo_name
        self.fifo = WatchedFifo(ServerFifo(fifo_name, 0o660 if fifo_mode is None else fifo_mode,
                                           fifo_user, fifo_group, pipe_size=PIPE_SIZE),
                                log, "jsonrpcs FIFO")
        self.reply_dir = reply_dir or "/tmp/"
        self.formatted = pretty_format != 0
        self.management = management
        self.commands = RpcCommands(management)
        self.reader = jsonrpc.FifoStream()
        super().__init__(**timeouts)

    def open(self):
        """Create the server FIFO and open it. Raises OSError naming the path."""
        path = self.fifo_name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISFIFO(st.st_mode):
            raise OSError(errno.EEXIST, "jsonrpcs fifo_name %s exists and is not a FIFO" % path)
        try:
            # a stale FIFO of a previous run is replaced, as Kamailio does
            self.open_fifo()
        except (OSError, KeyError) as exc:
            raise OSError("cannot create jsonrpcs FIFO %s: %s" % (path, exc)) from exc

    def on_event(self, event):
        if isinstance(event, jsonrpc.Document):
            self._on_document(event.data)
        else:
            self.limited.error("jsonrpc fifo: %s: %s", event.reason, _excerpt(event.head))
            self._error_job(event.reply_name, (event.code, None), event.id, event.has_id)

    def _on_document(self, data):
        request = jsonrpc.parse_request(data, self.reply_dir)
        if isinstance(request, jsonrpc.Invalid):
            self.limited.error("jsonrpc fifo: %s: %s", request.reason, _excerpt(data))
            if request.error is not None:
                self._error_job(request.reply_name, request.error, request.id, request.has_id)
            return

        def run(rotated=None):
            reply, problem = answer(request, self.commands, self.formatted, rotated)
            if problem:
                self.limited.error("jsonrpc fifo: %s", problem)
            return reply

        slow = request.method in SLOW
        begin = getattr(self.management, "begin_rotation", None) if slow else None
        self._submit(request.reply_name, request.method, run, slow,
                     rotation=(begin, run) if begin else None)

    def _error_job(self, reply_name, error, ident, has_id):
        """Tell a client its document was refused, if it said where to reply."""
        if not isinstance(reply_name, str) or not reply_name:
            return
        if jsonrpc.check_reply_name(reply_name, self.reply_dir):
            return
        reply = jsonrpc.encode_reply(error=jsonrpc.error_object(*error),
                                     id=jsonrpc.reply_id(ident), has_id=has_id,
                                     formatted=self.formatted)
        self._submit(reply_name, "error reply", lambda: reply)

    def _submit(self, reply_name, label, run, slow=False, rotation=None):
        self.jobs.submit(os.path.join(self.reply_dir, reply_name), label, run, slow, rotation)


def _excerpt(data, limit=120):
    text = data[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > limit else "")
