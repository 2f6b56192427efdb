"""binrpc, the binary RPC of Kamailio's ctl module and `kamcmd` (pure codec, no IO).

Packet: a header, then `body_len` bytes of records.

    byte 0   0xA1                 magic 0xA, version 1
    byte 1   type<<4 | (LL-1)<<2 | (CL-1)
             type 0 request, 1 reply, 3 fault; LL bytes of body length and CL bytes
             of cookie follow, both big-endian and as short as the value allows
             (at least 1 byte). The reply echoes the request's cookie.

Record: one byte `S|size(3 bits)|type(4 bits)`. S=0: size is the value's length in
bytes. S=1: the next `size` bytes hold the length; with length 0 this marks the end
of a struct (0x83) or array (0x84). Types: 0 int (big-endian, minimal bytes, 0 bytes
for 0), 1 string (NUL-terminated, the length includes the NUL), 2 double (sent as an
int holding value*1000), 3 struct, 4 array, 5 struct member name (string-like, then
the member's value), 6 bytes. A request's records are the method name, then the
parameters; a fault's body is an int code and a string message.
"""
from dataclasses import dataclass

from kamflat.proto.sansio import NEED_DATA

MAGIC_VERSION = 0xA1
REQUEST, REPLY, FAULT = 0, 1, 3
T_INT, T_STR, T_DOUBLE, T_STRUCT, T_ARRAY, T_AVP, T_BYTES = range(7)
MAX_BODY = 1 << 20       # kamcmd itself never sends or accepts more than 128 KiB


class BinrpcError(ValueError):
    """Bytes that are not binrpc (the message says what and where)."""


@dataclass(frozen=True)
class Packet:
    type: int
    cookie: int
    body: bytes


def int_bytes(value):
    """A 32-bit int as binrpc writes it: big-endian, leading zero bytes dropped."""
    value &= 0xFFFFFFFF
    size = (value.bit_length() + 7) // 8
    return value.to_bytes(size, "big")


def encode_header(ptype, body_len, cookie):
    length = int_bytes(body_len) or b"\x00"
    cookie_b = int_bytes(cookie) or b"\x00"
    return bytes((MAGIC_VERSION, ptype << 4 | (len(length) - 1) << 2 | (len(cookie_b) - 1))) \
        + length + cookie_b


def encode_packet(ptype, cookie, body):
    return encode_header(ptype, len(body), cookie) + body


def parse_header(buf):
    """(type, body_len, cookie, header_len) from the start of `buf`, or None if more
    bytes are needed. Raises BinrpcError for something that is not a binrpc header."""
    if len(buf) < 2:
        return None
    if buf[0] != MAGIC_VERSION:
        raise BinrpcError("bad magic/version byte 0x%02x (expected 0xa1)" % buf[0])
    ptype = buf[1] >> 4
    if ptype not in (REQUEST, REPLY, FAULT):
        raise BinrpcError("bad packet type %d" % ptype)
    len_len = (buf[1] >> 2 & 3) + 1
    cookie_len = (buf[1] & 3) + 1
    end = 2 + len_len + cookie_len
    if len(buf) < end:
        return None
    body_len = int.from_bytes(buf[2:2 + len_len], "big")
    cookie = int.from_bytes(buf[2 + len_len:end], "big")
    return ptype, body_len, cookie, end


@dataclass(frozen=True)
class StreamError:
    """The bytes are not binrpc (`reason` says what): the stream cannot be resynced,
    so the connection must go. The reader gives this event from then on."""
    reason: str


class PacketReader:
    """Cuts a stream into Packets: `receive_data(bytes)`, then `next_event()` until
    it returns NEED_DATA. Errors are events (StreamError), as in the MI and JSON-RPC
    readers."""

    def __init__(self, max_body=MAX_BODY):
        self._buf = bytearray()
        self.max_body = max_body
        self._error = None

    def receive_data(self, data):
        self._buf += data

    def next_event(self):
        """The next Packet, a StreamError, or NEED_DATA."""
        if self._error is None:
            try:
                return self._next_packet()
            except BinrpcError as exc:
                self._error = StreamError(str(exc))
                self._buf.clear()
        return self._error

    def _next_packet(self):
        header = parse_header(self._buf)
        if header is None:
            return NEED_DATA
        ptype, body_len, cookie, hlen = header
        if body_len > self.max_body:
            raise BinrpcError("packet body of %d bytes is larger than %d" % (body_len,
                                                                             self.max_body))
        if len(self._buf) < hlen + body_len:
            return NEED_DATA
        body = bytes(self._buf[hlen:hlen + body_len])
        del self._buf[:hlen + body_len]
        return Packet(ptype, cookie, body)


# ---------------------------------------------------------------- records

def _record(rtype, payload):
    """A record whose value is `payload` (its length goes in the header)."""
    n = len(payload)
    if n < 8:
        return bytes((n << 4 | rtype,)) + payload
    length = int_bytes(n)
    return bytes(((len(length) | 8) << 4 | rtype,)) + length + payload


def encode_value(value):
    """One Python value as records: int/bool -> int, str -> string, float -> double
    (fixed point, 3 decimals, as Kamailio sends it), dict -> struct, list -> array,
    bytes -> bytes, None -> the string Kamailio sends for a NULL string."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return bytes((len(int_bytes(value)) << 4 | T_INT,)) + int_bytes(value)
    if isinstance(value, str):
        return _record(T_STR, value.encode("utf-8") + b"\x00")
    if isinstance(value, float):
        fixed = int_bytes(int(value * 1000))
        return bytes((len(fixed) << 4 | T_DOUBLE,)) + fixed
    if isinstance(value, bytes):
        return _record(T_BYTES, value)
    if isinstance(value, dict) or getattr(value, "struct_pairs", False):
        pairs = value.items() if isinstance(value, dict) else value
        members = b"".join(_record(T_AVP, str(k).encode("utf-8") + b"\x00") + encode_value(v)
                           for k, v in pairs)
        return bytes((T_STRUCT,)) + members + bytes((0x80 | T_STRUCT,))
    if isinstance(value, (list, tuple)):
        return bytes((T_ARRAY,)) + b"".join(map(encode_value, value)) + bytes((0x80 | T_ARRAY,))
    if value is None:
        return encode_value("<null string>")
    raise TypeError("binrpc cannot send %s" % type(value).__name__)


def encode_body(values):
    return b"".join(map(encode_value, values))


def encode_fault(code, message):
    """A fault body: the code, then the message (Kamailio caps it at 255 bytes)."""
    text = message.encode("utf-8")[:255]
    return encode_value(int(code)) + _record(T_STR, text + b"\x00")


_END = object()


class _Reader:
    def __init__(self, body):
        self.body = body
        self.pos = 0

    def record(self):
        """(type, value, is_end) of the next record."""
        body = self.body
        if self.pos >= len(body):
            raise BinrpcError("record expected at offset %d, body ends" % self.pos)
        head = body[self.pos]
        rtype, size = head & 0x0F, head >> 4
        self.pos += 1
        end_tag = False
        if size & 8:
            end_tag = True
            n = size & 7
            if self.pos + n > len(body):
                raise BinrpcError("record length runs past the body at offset %d" % self.pos)
            size = int.from_bytes(body[self.pos:self.pos + n], "big")
            self.pos += n
        if self.pos + size > len(body):
            raise BinrpcError("record of %d bytes runs past the body at offset %d"
                              % (size, self.pos))
        payload = body[self.pos:self.pos + size]
        self.pos += size
        if rtype in (T_STRUCT, T_ARRAY):
            return rtype, None, end_tag and size == 0
        if rtype == T_INT:
            v = int.from_bytes(payload, "big")
            return rtype, v - (1 << 32) if len(payload) == 4 and v >> 31 else v, False
        if rtype in (T_STR, T_AVP):
            return rtype, payload[:-1].decode("utf-8", "replace") if payload else "", False
        if rtype == T_DOUBLE:
            v = int.from_bytes(payload, "big")
            v = v - (1 << 32) if len(payload) == 4 and v >> 31 else v
            return rtype, v / 1000, False
        if rtype == T_BYTES:
            return rtype, bytes(payload), False
        raise BinrpcError("unknown record type %d at offset %d" % (rtype, self.pos - 1))

    def value(self):
        rtype, value, is_end = self.record()
        if is_end:
            return _END
        if rtype == T_STRUCT:
            members = {}
            while True:
                rtype, name, is_end = self.record()
                if is_end and rtype == T_STRUCT:
                    return members
                if rtype != T_AVP:
                    raise BinrpcError("struct member name expected at offset %d" % self.pos)
                members[name] = self.value()
        if rtype == T_ARRAY:
            items = []
            while (item := self.value()) is not _END:
                items.append(item)
            return items
        if rtype == T_AVP:
            raise BinrpcError("struct member name outside a struct at offset %d" % self.pos)
        return value


def decode_body(body):
    """All values of a body (structs as dicts, arrays as lists)."""
    reader = _Reader(body)
    out = []
    while reader.pos < len(body):
        value = reader.value()
        if value is _END:
            raise BinrpcError("unmatched end of struct/array at offset %d" % (reader.pos - 1))
        out.append(value)
    return out
