"""The sockets of the link between kamflat's processes (kamflat.proto.link): a
socketpair that keeps packet boundaries, and reading it one packet at a time into a
buffer kept per socket. The ingest and the writers use both; the arbiter makes the pairs.
"""
import mmap
import socket

from kamflat.proto import link


class PacketReader:
    """Reads one link packet at a time from `sock` into a buffer kept for it. recv(n)
    allocates n bytes for every call, a 2 MiB allocation mapped and faulted in each time
    (about 50 us for a 64 KiB chunk, 15 us for a 40-byte report, and as much again for
    a read that finds nothing); here only the packet's bytes are copied out. The buffer is
    an anonymous mapping: only the pages the largest packet touched take memory; private,
    so a process forked after it was made does not read into the same pages."""

    def __init__(self, sock, size=link.MAX_PACKET):
        self.sock = sock
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        self.view = memoryview(self.buffer)

    def recv(self, flags=0):
        """The next packet (b"" at the peer's close), as sock.recv(size, flags) gives it."""
        return bytes(self.view[:self.sock.recv_into(self.buffer, 0, flags)])


def seqpacket_pair(buffer=1 << 21):
    """A socketpair that keeps message boundaries, with room for big chunks."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return a, b
