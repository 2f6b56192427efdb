"""The bytes of `kamflat cat --json`'s lines, put together without json.dumps where that
gives the same bytes: records that need no JSON escaping and are UTF-8 are their values in
quotes, between the text of a template (pieces) made once per file and field count.

Pure: bytes in, bytes out. What belongs here is how a line is put together and the checks
that say when it may be; which records take which way, and the IO, stay in cat.py.
"""
import json
from functools import lru_cache

from kamflat.flatstore.reader import ENCODED_DELIMITER as _ENCODED

VALUE_SEPARATOR = b'", "'   # between two values in a JSON list of strings
ENCODED_DELIMITER = _ENCODED.encode()   # what --decode turns back into `|`

# What json.dumps escapes in a string: `"`, `\\` and the control characters.
_ESCAPED = bytes(range(0x20)) + b'"\\'
# Every other byte but `|`: what is left of a record without them is its shape.
_NOT_SHAPE = bytes(sorted(set(range(256)) - set(_ESCAPED + b"|")))


def needs_no_escape(data, separators=0):
    """True if `data` is UTF-8 and has nothing json.dumps escapes but for `separators`
    newlines (records joined by them): its JSON strings are then its bytes in quotes."""
    return len(data) - len(data.translate(None, _ESCAPED)) == separators and utf8(data)


def utf8(data):
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def uniform(text, count):
    """True if `text`, records joined by newlines, has `count` fields in every record and
    nothing json.dumps escapes (one pass over it: its `|`s, newlines and escaped bytes are
    compared with what they must be)."""
    shape = text.translate(None, _NOT_SHAPE)
    return shape == _shape(count, (len(shape) + 1) // count)


@lru_cache(maxsize=256)
def _shape(count, rows):
    """The `|`s and newlines of `rows` records of `count` fields joined by newlines."""
    return b"\n".join([b"|" * (count - 1)] * rows)


class Lines:
    """Printed lines of a block (each with its newline) for reader.merge_keyed: sliced by
    line numbers, it gives those lines' bytes (a memoryview of them, not a copy). Line i
    starts at byte scale * cum[i] + i * extra (cum: running sums of something the lines'
    lengths follow from, which its maker knows)."""
    __slots__ = ("data", "cum", "scale", "extra")

    def __init__(self, data, cum, scale, extra):
        self.data, self.cum, self.scale, self.extra = data, cum, scale, extra

    def __len__(self):
        return len(self.cum) - 1

    def __getitem__(self, lines):
        start, stop = lines.start, lines.stop
        return self.data[self.scale * self.cum[start] + start * self.extra:
                         self.scale * self.cum[stop] + stop * self.extra]


def make_pieces(table, file_name, keys, count):
    """The text of the JSON of a record of `count` values around the places of the values,
    in order (each value twice when there are keys: the record dict): a list of bytes, one
    more than places; None when the table, file or key names are not UTF-8 (the line is
    then escaped as a whole)."""
    def quoted(text):
        return json.dumps(text, ensure_ascii=False)
    value = '"\0"'          # a value's place: json.dumps writes no NUL (it escapes them)
    values = ", ".join([value] * count)   # VALUE_SEPARATOR between two values
    head = "{%s: %s, %s: %s, %s: [%s]" % (
        quoted("table"), quoted(table), quoted("file"), quoted(file_name),
        quoted("values"), values)
    if keys:
        named = ['%s: %s' % (quoted(key), value) for key in keys[:count]]
        if count > len(keys):
            named.append('%s: [%s]' % (quoted("_extra"), ", ".join([value] * (count - len(keys)))))
        head += ", %s: {%s}" % (quoted("record"), ", ".join(named))
    try:
        return [piece.encode() for piece in (head + "}").split("\0")]
    except UnicodeEncodeError:
        return None


def template(pieces):
    """A bytes %-template of the line make_pieces() describes, each value a %s."""
    return b"%s".join(piece.replace(b"%", b"%%") for piece in pieces)


def make_layout(pieces, keyed, count):
    """The slots of one record's line for uniform_json(): the text around its "values"
    list (slot 1) and, when `keyed`, around each value in the record dict (slots 3, 5,
    ...), which are None; and how long the line is: scale * len(values slot) + extra."""
    head, tail = pieces[0], pieces[-1] + b"\n"
    if not keyed:
        return [head, None, tail], 1, len(head) + len(tail)
    layout = [head, None, pieces[count]]
    for piece in pieces[count + 1:-1]:
        layout += [None, piece]
    layout += [None, tail]
    # the values' bytes are in the line twice: in the values slot, with the separators
    # between them, and in the record dict
    extra = sum(len(slot) for slot in layout if slot is not None) \
        - (count - 1) * len(VALUE_SEPARATOR)
    return layout, 2, extra


def uniform_json(text, count, layout, keyed, decode=False, time_index=None):
    """The JSON lines of records that all have `count` fields, need no JSON escaping and
    are UTF-8 (`text`: them joined by newlines; uniform() and utf8() say so), put together
    with one bytes.join: the lines (each with its newline) as one bytes, the records'
    values as they are in their "values" lists (their lengths give the lines', see
    make_layout), and their time column (bytes) when `time_index` is one of them."""
    decoded = decode and ENCODED_DELIMITER in text
    if decoded:      # each %7C as a NUL (one byte, as the | it stands for; the text has none)
        text = text.replace(ENCODED_DELIMITER, b"\0")
    values = text.replace(b"|", VALUE_SEPARATOR).split(b"\n")
    width = len(layout)
    slots = layout * len(values)
    slots[1::width] = values
    times = None
    if keyed:      # the values once more, one by one, in the record dict
        fields = text.replace(b"\n", b"|").split(b"|")
        for i in range(count):
            slots[3 + 2 * i::width] = fields[i::count]
        if time_index is not None and time_index < count:
            times = fields[time_index::count]
    data = b"".join(slots)
    if decoded:
        data = data.replace(b"\0", b"|")
    return data, values, times
