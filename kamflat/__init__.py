"""kamflat: the accounting side of a Kamailio SIP server.

It appends acc records to db_flatstore files exactly as Kamailio does and answers
Kamailio's management interfaces (MI FIFO, JSON-RPC FIFO, binrpc ctl socket).

Importing kamflat (or any of its pure layers: proto, config, acc, mgmt, flatstore.record)
loads no IO machinery; `kamflat.connect` loads the flatstore writer on first use.
"""
__version__ = "0.1.0"

__all__ = ["connect", "__version__"]


def __getattr__(name):
    # PEP 562: `kamflat.connect` without importing fcntl/mmap/threading at `import kamflat`.
    if name == "connect":
        from kamflat.flatstore.connection import connect
        return connect
    raise AttributeError("module 'kamflat' has no attribute %r" % name)
