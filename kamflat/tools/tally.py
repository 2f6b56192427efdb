"""Counting records by id against what a server acknowledged (fault tests, bench_faults).

Every record carries an id (its call-id, `TAG-N@kamflat`). After a fault:
- lost-acknowledged: reported as written to its sender, and in no file;
- duplicated: in the files more than once;
- torn: a line that is not one whole record.
A sender's acknowledged records are the lines the server took (its final answer's
`lines`) minus every line it answered with an error.
"""
import collections
import os

from kamflat.client import SendError, send

TABLE = "acc"
ID_FIELD = 3          # the call-id column of an acc record
FIELDS = 7


def record(tag, i):
    return {"table": TABLE, "values": ["INVITE", "ft", "", record_id(tag, i), 200, "OK",
                                       1795763336]}


def record_id(tag, i):
    return "%s-%d@kamflat" % (tag, i)


def acknowledged(ids, result):
    """The ids among `ids` (in the order sent) that `result` reported as written."""
    if result.error_count > len(result.errors):
        raise ValueError("%d errors but only %d described: cannot tell which lines were "
                         "written" % (result.error_count, len(result.errors)))
    refused = {line for line, _ in result.errors}
    acked = {ids[n - 1] for n in range(1, result.lines + 1) if n not in refused}
    if len(acked) != result.written:
        raise ValueError("the answer does not add up: %d lines, %d refused, %d written"
                         % (result.lines, len(refused), result.written))
    return acked


def send_records(path, tag, first, count, timeout=120.0):
    """Send records first..first+count-1 of `tag` in one stream: (ids, acknowledged);
    a connection the server closed without an answer acknowledged nothing."""
    ids = [record_id(tag, i) for i in range(first, first + count)]
    try:
        result = send(path, (record(tag, i) for i in range(first, first + count)),
                      timeout=timeout)
    except SendError:
        return ids, set()
    return ids, acknowledged(ids, result)


def file_lines(directory, prefix=TABLE + "_"):
    """Every line of every file of the table in `directory` (live and rotated), as bytes."""
    lines = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix):
            with open(os.path.join(directory, name), "rb") as f:
                lines.extend(f.read().splitlines(keepends=True))
    return lines


def count(sent, acked, lines):
    """sent, acked: sets of ids; lines: file lines. A dict of the figures."""
    on_disk = collections.Counter()
    torn = 0
    for line in lines:
        fields = line.split(b"|")
        if not line.endswith(b"\n") or len(fields) != FIELDS:
            torn += 1
            continue
        on_disk[fields[ID_FIELD].decode(errors="replace")] += 1
    return {
        "sent": len(sent),
        "acknowledged": len(acked),
        "on disk": sum(on_disk.values()),
        "lost-acknowledged": sum(1 for i in acked if i not in on_disk),
        "duplicated": sum(n - 1 for n in on_disk.values() if n > 1),
        "torn": torn,
        "foreign": sum(1 for i in on_disk if i not in sent),   # never sent: a bug as well
    }
