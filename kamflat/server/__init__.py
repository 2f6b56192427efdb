"""The process layer: master, writer, ingest and management processes, rotation, shared
counters, UDP sockets, the FIFO servers and the ctl socket. All IO lives here."""
