"""What the pure protocol readers (mi, jsonrpc, binrpc) share."""


class _NeedData:
    def __repr__(self):
        return "NEED_DATA"


# Returned by a reader's next_event() when it needs more bytes first.
NEED_DATA = _NeedData()
