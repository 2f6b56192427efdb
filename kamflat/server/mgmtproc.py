"""The management process: runs every configured management transport.

Each transport (MI FIFO, JSON-RPC FIFO, binrpc ctl socket) is a server object
with open() / serve(stop_event) / close(), served in its own thread here, all
calling the one Management object. A slow or stuck client of one transport
therefore never holds up another transport.
"""
import logging
import os
import threading

from kamflat.server.child import ChildProcess

log = logging.getLogger("kamflat.management")


def build_servers(model, management):
    """The transports the config asks for, from its resolved model (config/model.py)."""
    servers = []
    if model.mi_fifo:
        from kamflat.server.mi_fifo import MIFifoServer
        fifo = model.mi_fifo
        servers.append(MIFifoServer(
            fifo.path, fifo_mode=fifo.mode, fifo_user=fifo.user, fifo_group=fifo.group,
            reply_dir=fifo.reply_dir, reply_indent=fifo.options["reply_indent"],
            modules=model.modules, management=management))
    if model.jsonrpc_fifo:
        from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer
        fifo = model.jsonrpc_fifo
        servers.append(JsonRpcFifoServer(
            fifo.path, fifo_mode=fifo.mode, fifo_user=fifo.user, fifo_group=fifo.group,
            reply_dir=fifo.reply_dir, management=management,
            pretty_format=fifo.options["pretty_format"]))
    if model.ctl:
        from kamflat.server.ctl import CtlServer
        for ctl in model.ctl:
            servers.append(CtlServer(
                ctl.address, management=management, mode=ctl.mode, user=ctl.user,
                group=ctl.group,
                max_connections=model.config.param("kamflat", "ctl_max_connections"),
                idle_timeout=model.config.param("kamflat", "ctl_idle_timeout") / 1000))
    return servers


def run(settings, management, ready_fd):
    """The management process's main: serve the configured transports until SIGTERM."""
    stop = threading.Event()
    process = ChildProcess()
    process.on_term = stop.set
    process.init_signals(wakeup=False)   # the main thread waits on `stop`, not select()
    try:
        servers = build_servers(settings.model, management)
    except Exception as exc:   # any reason a transport cannot start stops the server
        os.write(ready_fd, ("error: %s" % exc).encode())
        return 1
    return serve_all(servers, stop, ready_fd)


def serve_all(servers, stop, ready_fd, check_every=1.0):
    """Open every server, then say so on `ready_fd` ("ok", or "error: why" when one
    could not open: the others are closed again); serve each in a thread of its own
    until `stop` is set or one of them stops by itself (checked every `check_every`
    s); close them all. Returns the exit status: 0, or 1 when a server could not
    open or stopped unexpectedly (the master then restarts this process)."""
    opened = []
    try:
        for server in servers:
            server.open()
            opened.append(server)
    except Exception as exc:   # any reason a transport cannot start stops the server
        os.write(ready_fd, ("error: %s" % exc).encode())
        for server in opened:
            server.close()
        return 1
    os.write(ready_fd, b"ok")
    threads = [threading.Thread(target=server.serve, args=(stop,), daemon=True,
                                name=type(server).__name__) for server in opened]
    for thread in threads:
        thread.start()
    crashed = False
    while not stop.wait(check_every):
        if not all(t.is_alive() for t in threads):
            log.error("a management transport stopped unexpectedly; restarting the process")
            crashed = True
            stop.set()
    for thread in threads:
        thread.join(2.0)
    for server in opened:
        server.close()
    return 1 if crashed else 0
