"""kamflat: the accounting side of a Kamailio SIP server.

It appends acc records to db_flatstore files exactly as Kamailio does and answers
Kamailio's management interfaces (MI FIFO, JSON-RPC FIFO, binrpc ctl socket).
"""

__version__ = "0.1.0"
