"""What the pure protocol readers (mi.MIParser, jsonstream.FifoStream,
binrpc.PacketReader) share: one interface, as h11's.

- `receive_data(bytes)` adds one chunk, as it was read (the FIFO readers treat the
  start of a write as a resynchronisation point, so chunks are not to be merged).
- `next_event()` returns the next event, or NEED_DATA; call it until NEED_DATA
  after each chunk. Errors are events too (mi.ProtocolDrop, mi.ParseError,
  jsonstream.Rejected, binrpc.StreamError), never exceptions.
- The FIFO readers, which resync, also have `pending` (something unfinished is held)
  and `abandon(reason)` (give it up: the IO layer's idle timeout); what that reports
  comes out of `next_event()`.
"""


class _NeedData:
    def __repr__(self):
        return "NEED_DATA"


# Returned by a reader's next_event() when it needs more bytes first.
NEED_DATA = _NeedData()
