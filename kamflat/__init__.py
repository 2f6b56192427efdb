"""kamflat: the accounting side of a Kamailio SIP server.

It appends acc records to db_flatstore files exactly as Kamailio does and answers
Kamailio's management interfaces (MI FIFO, JSON-RPC FIFO, binrpc ctl socket).
"""
from kamflat.flatstore import connect

__version__ = "0.1.0"

__all__ = ["connect"]
