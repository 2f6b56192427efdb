"""kamflat.flatstore.integrity: torn tails cut at open, the write journal, files deleted
or moved under a connection. A kill -9 at the exact instant is not aimable from a test,
so the journal is left as a killed writer leaves it, and its successor is checked."""
import os

import pytest

from kamflat.flatstore import integrity
from kamflat.flatstore.connection import connect
from kamflat.flatstore.integrity import J_END


class Shared:
    """What outlives a writer process: its statistic cell and its journal."""

    def __init__(self):
        self.cell = memoryview(bytearray(8)).cast("Q")
        self.journal = integrity.private_journal()

    def connect(self, directory, flush):
        return connect("flatstore:%s" % directory, rank=1, flush=flush,
                       written_cell=lambda table: self.cell, journal=self.journal)


VALUES = ["INVITE", "ft", "", "c@h", 200, "OK", 1795763336]
RECORD = b"INVITE|ft||c@h|200|OK|1795763336\n"


def killed_in_write(shared, conn, records, reached):
    """Leave the journal as a writer killed inside its write() of `records` records
    leaves it, with `reached` bytes of them in the file: noted, not counted."""
    table = conn._files["acc"]
    shared.cell[0] = 3
    table.written, table.end = 0, os.path.getsize(table.path)
    with open(table.path, "ab") as f:
        f.write((RECORD * records)[:reached])
    journal = shared.journal
    journal[integrity.J_INO], journal[integrity.J_BASE] = table.ino, 3
    journal[integrity.J_START], journal[integrity.J_RECORDS] = table.end, records
    journal[J_END] = table.end + len(RECORD) * records


@pytest.mark.parametrize("records, reached, counted", [
    (1, len(RECORD), 4),                  # written, killed before the count
    (1, 10, 3),                           # killed in the write: torn, cut, not counted
    (5, 5 * len(RECORD), 8),              # a whole block
    (5, 2 * len(RECORD) + 7, 5),          # half a block: its 2 whole records count
    (5, 0, 3),                            # killed before the write
])
def test_the_successor_counts_exactly_what_reached_the_file(tmp_path, records, reached,
                                                            counted):
    shared = Shared()
    conn = shared.connect(tmp_path, flush=records == 1)
    conn.use_table("acc")
    conn.insert(None, VALUES)
    conn.write_buffered()
    killed_in_write(shared, conn, records, reached)
    successor = shared.connect(tmp_path, flush=True)
    successor.repair_files()
    data = (tmp_path / "acc_129.log").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1 + (counted - 3)
    assert shared.cell[0] == counted and shared.journal[J_END] == 0
    successor.repair_files()                     # idempotent
    assert shared.cell[0] == counted


def test_a_torn_tail_is_cut_at_open_and_logged(tmp_path, caplog):
    (tmp_path / "acc_129.log").write_bytes(RECORD + b"INVITE|half")
    conn = connect("flatstore:%s" % tmp_path, rank=1)
    conn.use_table("acc")
    conn.insert(None, VALUES)
    assert (tmp_path / "acc_129.log").read_bytes() == RECORD * 2
    assert "cut 11 bytes beginning b'INVITE|half'" in caplog.text


@pytest.mark.parametrize("fault, found", [("unlink", "deleted"), ("rename", "moved")])
def test_check_files_tells_deleted_from_moved(tmp_path, fault, found):
    shared = Shared()
    conn = shared.connect(tmp_path, flush=True)
    conn.use_table("acc")
    conn.insert(None, VALUES)
    assert conn.check_files() == {}
    path = tmp_path / "acc_129.log"
    os.unlink(path) if fault == "unlink" else os.rename(path, tmp_path / "acc_129.log.1")
    assert conn.check_files() == {"acc": found}
    conn.insert(None, VALUES)                    # reopened by name
    assert path.read_bytes() == RECORD
    assert conn.written_count("acc") == 2 == shared.cell[0]


def test_a_held_block_of_a_flush_1_connection_is_journaled_whole(tmp_path):
    """hold() makes a flush=1 connection write a block (a writer's chunk): its journal
    entry holds every record of it, and the one-record writes after it note only one."""
    shared = Shared()
    conn = shared.connect(tmp_path, flush=True)
    conn.use_table("acc")
    conn.hold()
    for _ in range(3):
        conn.insert(None, VALUES)
    conn.hold(False)
    assert conn.written_count("acc") == 0 and conn.taken_count("acc") == 3
    conn.insert(None, VALUES)         # what hold() left buffered is written first, in order
    assert conn.written_count("acc") == 4 and shared.cell[0] == 4
    assert shared.journal[integrity.J_RECORDS] == 1 and shared.journal[J_END] == 0
    assert (tmp_path / "acc_129.log").read_bytes() == RECORD * 4
