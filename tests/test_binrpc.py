"""Pure tests of kamflat.proto.binrpc (and ctl.answer, the request -> reply step)."""
import pytest

from kamflat.proto import binrpc
from kamflat.proto.binrpc import FAULT, NEED_DATA, REPLY, REQUEST, BinrpcError, Packet
from kamflat.server.ctl import answer, parse_address
from kamflat.mgmt.rpc_commands import RpcCommands
from test_jsonrpc_fifo import make_management

COOKIE = bytes.fromhex("6b8b4567")

# (value, bytes) from the format description in Kamailio's src/modules/ctl/binrpc.h
RECORDS = [
    (0x1234, bytes.fromhex("201234")),
    (0x07, bytes.fromhex("1007")),
    (0, bytes.fromhex("00")),
    (-1, bytes.fromhex("40ffffffff")),
    ("abcdef", b"\x71abcdef\x00"),
    ("abcdefhij", b"\x91\x0aabcdefhij\x00"),
    ("", b"\x11\x00"),
    ([1, 2], bytes.fromhex("04 1001 1002 84")),
    ([7, "abc"], b"\x04\x10\x07\x41abc\x00\x84"),
    ({"intval": 3, "s": "abc"}, b"\x03\x75intval\x00\x10\x03\x25s\x00\x41abc\x00\x83"),
    (2.5, bytes.fromhex("2209c4")),              # doubles travel as value*1000
    (b"raw", b"\x36raw"),
]


@pytest.mark.parametrize("value,data", RECORDS)
def test_record_encoding(value, data):
    assert binrpc.encode_value(value) == data
    assert binrpc.decode_body(data) == [value]


def test_captured_kamcmd_request_and_reply():
    """kamcmd flatstore.rotate against Kamailio 5.6 (spec section 5)."""
    request = b"\xa1\x03\x13" + COOKIE + b"\x91\x11flatstore.rotate\x00"
    reader = binrpc.PacketReader()
    reader.receive_data(request)
    packet = reader.next_event()
    assert packet == Packet(REQUEST, 0x6B8B4567, b"\x91\x11flatstore.rotate\x00")
    assert binrpc.decode_body(packet.body) == ["flatstore.rotate"]
    assert binrpc.encode_packet(REQUEST, 0x6B8B4567, binrpc.encode_body(["flatstore.rotate"])) \
        == request
    reply = answer(packet, RpcCommands(make_management()))
    assert reply == b"\xa1\x13\x00" + COOKIE


@pytest.mark.parametrize("cookie,header", [
    (0x6B8B4567, "a113006b8b4567"),             # 4-byte cookie
    (0x12, "a1100012"),                         # 1-byte cookie, 1-byte length
    (0, "a1100000"),
    (0x10000, "a11200010000"),
])
def test_header_lengths_are_minimal(cookie, header):
    assert binrpc.encode_header(REPLY, 0, cookie).hex() == header
    ptype, body_len, got_cookie, hlen = binrpc.parse_header(bytes.fromhex(header))
    assert (ptype, body_len, got_cookie, hlen) == (REPLY, 0, cookie, len(header) // 2)


def test_long_body_length():
    body = binrpc.encode_value("x" * 300)
    packet = binrpc.encode_packet(REPLY, 1, body)
    assert packet[1] == 0x14 and packet[2:4] == len(body).to_bytes(2, "big")


def test_reader_waits_for_whole_packets_and_splits_glued_ones():
    one = binrpc.encode_packet(REQUEST, 5, binrpc.encode_body(["core.version"]))
    two = binrpc.encode_packet(REQUEST, 6, binrpc.encode_body(["core.ps", 1, "x"]))
    reader = binrpc.PacketReader()
    got = []
    for b in one + two:
        reader.receive_data(bytes([b]))
        while (packet := reader.next_event()) is not NEED_DATA:
            got.append(packet)
    assert [(p.cookie, binrpc.decode_body(p.body)) for p in got] == [
        (5, ["core.version"]), (6, ["core.ps", 1, "x"])]


@pytest.mark.parametrize("data,message", [
    (b"\xb1\x00\x00\x00", "magic"),
    (b"\xa1\x50\x00\x00", "packet type"),
    (b"\xa1\x0c" + b"\xff" * 4 + b"\x00", "larger than"),
])
def test_reader_rejects_what_is_not_binrpc(data, message):
    reader = binrpc.PacketReader()
    reader.receive_data(data)
    error = reader.next_event()
    assert isinstance(error, binrpc.StreamError) and message in error.reason
    reader.receive_data(binrpc.encode_packet(REQUEST, 1, b""))
    assert reader.next_event() == error         # a broken stream stays broken


@pytest.mark.parametrize("body,message", [
    (b"\x71abc", "runs past"),
    (b"\x83", "unmatched end"),
    (b"\x03\x10\x01\x83", "member name expected"),
    (b"\x0f", "unknown record type"),
])
def test_bad_bodies(body, message):
    with pytest.raises(BinrpcError, match=message):
        binrpc.decode_body(body)


def call(*values, ptype=REQUEST):
    packet = Packet(ptype, 77, binrpc.encode_body(values))
    reply = answer(packet, RpcCommands(make_management()))
    header = binrpc.parse_header(reply)
    return header[0], header[2], binrpc.decode_body(reply[header[3]:])


def test_answers():
    assert call("core.version")[2][0].startswith("kamailio 5.6.3 ")
    assert call("no.such.method") == (FAULT, 77, [500, "command no.such.method not found"])
    assert call(12) == (FAULT, 77, [400, "bad request method: the first record must be the "
                                         "method name"])
    assert call("core.version", ptype=REPLY)[0] == FAULT
    assert call("system.methodHelp") == (FAULT, 77, [400, "Method Name Expected"])
    ptype, _cookie, values = call("core.psx")
    assert ptype == REPLY and values[1]["DSC"] == "udp receiver child=0 sock=127.0.0.1:5070"
    # binrpc ints are ints: core.echo turns them into strings, stops at a double
    assert call("core.echo", "a", 5, 2.5, "b")[2] == ["a", "5"]
    # clear_statistics sends every line over binrpc (jsonrpcs only shows the last)
    assert call("stats.clear_statistics", "core:")[2] == ["core:fwd_requests = 0",
                                                          "core:rcv_requests = 0 (3)"]


@pytest.mark.parametrize("address,parsed", [
    ("unixs:/run/kamailio/kamailio_ctl", ("unix", "/run/kamailio/kamailio_ctl")),
    ("unix:/tmp/x", ("unix", "/tmp/x")),
    ("/tmp/y", ("unix", "/tmp/y")),
    ("unixd:/tmp/z", ("unixd", "/tmp/z")),
    ("tcp:127.0.0.1:2049", ("tcp", ("127.0.0.1", 2049))),
    ("udp:localhost:2046", ("udp", ("localhost", 2046))),
])
def test_parse_address(address, parsed):
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["tcp:host", "sctp:h:1", "nonsense"])
def test_parse_address_errors(address):
    with pytest.raises(ValueError, match="ctl address"):
        parse_address(address)
