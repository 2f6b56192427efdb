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


def build_servers(cfg, management):
    """The transports the config asks for, built from their modparams."""
    servers = []
    if cfg.has_module("mi_fifo") and cfg.param("mi_fifo", "fifo_name"):
        from kamflat.server.mi_fifo import MIFifoServer
        servers.append(MIFifoServer(
            cfg.param("mi_fifo", "fifo_name"),
            fifo_mode=cfg.param("mi_fifo", "fifo_mode"),
            fifo_user=cfg.param("mi_fifo", "fifo_user"),
            fifo_group=cfg.param("mi_fifo", "fifo_group"),
            reply_dir=cfg.param("mi_fifo", "reply_dir"),
            reply_indent=cfg.param("mi_fifo", "reply_indent"),
            modules=cfg.modules, management=management))
    transport = cfg.param("jsonrpcs", "transport") if cfg.has_module("jsonrpcs") else None
    if transport is not None and (transport == 0 or transport & 2):   # 2: the FIFO transport
        from kamflat.server.jsonrpc_fifo import JsonRpcFifoServer
        servers.append(JsonRpcFifoServer(
            cfg.runtime_path(cfg.param("jsonrpcs", "fifo_name")),
            fifo_mode=cfg.param("jsonrpcs", "fifo_mode"),
            fifo_user=cfg.param("jsonrpcs", "fifo_user"),
            fifo_group=cfg.param("jsonrpcs", "fifo_group"),
            reply_dir=cfg.param("jsonrpcs", "fifo_reply_dir"),
            management=management, pretty_format=cfg.param("jsonrpcs", "pretty_format")))
    if cfg.has_module("ctl"):
        from kamflat.server.ctl import CtlServer
        for address in cfg.param_values("ctl", "binrpc"):
            servers.append(CtlServer(address, management=management,
                                     mode=cfg.param("ctl", "mode"), user=cfg.param("ctl", "user"),
                                     group=cfg.param("ctl", "group")))
    return servers


def run(settings, management, ready_fd):
    stop = threading.Event()
    process = ChildProcess()
    process.on_term = stop.set
    process.init_signals(wakeup=False)   # the main thread waits on `stop`, not select()
    opened = []
    try:
        for server in build_servers(settings.cfg, management):
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
    while not stop.wait(1.0):
        if not all(t.is_alive() for t in threads):
            log.error("a management transport stopped unexpectedly; restarting the process")
            crashed = True
            stop.set()
    for thread in threads:
        thread.join(2.0)
    for server in opened:
        server.close()
    return 1 if crashed else 0
