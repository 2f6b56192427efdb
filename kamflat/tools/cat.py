"""`kamflat cat` and `kamflat follow`: a table's records, merged across per-process files.

    kamflat cat [-f FILE | --dir DIR] [--rotated] [--json] [--keys K1,K2...] [--decode] TABLE
    kamflat follow [-f FILE | --dir DIR] [--json] [--keys ...] [--decode] [--new] [--rotated]
                   [--poll] [--timeout S] [--count N] TABLE

Plain output is each record exactly as on disk, one per line. --json prints one object per
record: {"table", "file", "values": [...]} plus "record": {column: value} when the columns
are known: acc's 7 columns + the db_extra names of the config (-f) for acc's tables, or the
names given with --keys.
"""
import argparse
import json
import os
import sys
from itertools import accumulate, compress, islice

from kamflat.flatstore import reader
from kamflat.tools import catjson, catproc
from kamflat.tools.catjson import ENCODED_DELIMITER

WRITE_LINES = 512     # lines cat gathers before a write: fewer writes than runs, still cached
WRITE_SIZE = 1 << 18  # bytes of JSON lines cat gathers before a write (their lines are longer)
JSON_BATCH = 1024     # records turned into JSON at a time: their fields stay in the CPU cache

CAT_DOC = "print a table's records merged across its per-process files"
FOLLOW_DOC = "print a table's records as they are written, across rotations"


class ToolError(Exception):
    """A user error: printed as one line, exit status 2."""


def add_common_arguments(parser):
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-f", dest="config", metavar="FILE",
                       help="the server's config: its acc db_url directory and db_extra")
    where.add_argument("--dir", metavar="DIR", help="the flatstore directory")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.add_argument("--keys", metavar="K1,K2...",
                        help="column names (default for acc's tables: acc's columns + db_extra;"
                             " an empty value: none)")
    parser.add_argument("--decode", action="store_true",
                        help="in --json values, turn %%7C back into | (ambiguous: Kamailio does "
                             "not escape %%, so a literal %%7C is decoded too)")
    parser.add_argument("table", help="table name, e.g. acc or missed_calls")


class Source:
    """Where a table's files are and what their columns are called, from --dir or -f."""

    def __init__(self, args):
        self.table = args.table
        if "/" in self.table or self.table in ("", ".", ".."):
            raise ToolError("%r is not a table name" % self.table)
        acc_tables, extra = reader.ACC_TABLES, []
        if args.config:
            from kamflat.config.model import ConfigError, load_model
            try:
                model = load_model(args.config)
            except ConfigError as exc:
                raise ToolError(str(exc))
            self.directory = model.db_dir
            acc_tables = (model.acc_table, model.missed_table)
            extra = model.extra_columns
        else:
            self.directory = args.dir
        if not os.path.isdir(self.directory):
            raise ToolError("flatstore directory %s does not exist" % self.directory)
        if args.keys is not None:
            self.keys = [k.strip() for k in args.keys.split(",") if k.strip()]
        elif self.table in acc_tables:
            self.keys = reader.acc_columns(extra)
        else:
            self.keys = []
        self.time_index = self.keys.index("time") if "time" in self.keys else None


class Printer:
    """Writes records to stdout as raw lines or JSON objects.

    cat hands over whole blocks of a file (chunks()), turned into what is printed before
    they are merged, and gathers the runs it prints into big writes (write_lines or, for
    JSON, write_block; flush); follow prints record by record (write)."""

    def __init__(self, args, source):
        self.json = args.json
        self.decode = args.decode
        self.table = source.table
        self.keys = source.keys
        self.out = sys.stdout.buffer
        # The JSON of a record is put together from the text around its values, per file
        # and field count, when the record needs no JSON escaping and is UTF-8 (see
        # _json_block); with repeated keys or one named _extra the record dict is not a
        # plain zip: one at a time.
        self._pieces = {}
        self._layouts = {}
        self._templates = {}
        self._templated = len(set(self.keys)) == len(self.keys) and "_extra" not in self.keys
        self._pending = []
        self._pending_size = 0

    def chunks(self, blocks, file_name, time_index, converter=None):
        """One file's blocks (reader.read_file_blocks) -> (what is printed for their
        records, their time keys), for reader.merge_keyed; the keys are None without a time
        column. Plain: the records; JSON: a catjson.Lines, some made by `converter` (a
        catproc.Converter) if one is given."""
        if self.json:
            return self._json_chunks(blocks, file_name, time_index, converter)
        chunks = map(reader.split_block, blocks)
        if time_index is None:
            return ((records, None) for records in chunks)
        return reader.keyed_chunks(chunks, time_index)

    def _json_chunks(self, blocks, file_name, time_index, converter):
        previous = 0
        for block, (lines, keys) in self._json_converted(blocks, file_name, time_index,
                                                         converter):
            if time_index is None:
                yield lines, None
                continue
            if keys is None:
                keys = reader.time_keys(reader.split_block(block), time_index, previous)
            previous = keys[-1]
            yield lines, keys

    def _json_converted(self, blocks, file_name, time_index, converter):
        """(block, json_keyed() of it) for each block. With a converter, the SHARE blocks
        after each one made here go to the converter first, to be made there meanwhile."""
        if converter is None:
            for block in blocks:
                yield block, self.json_keyed(block, file_name, time_index)
            return
        blocks = iter(blocks)
        for block in blocks:
            sent = []
            for ahead in islice(blocks, catproc.SHARE):
                ticket = converter.send(file_name, ahead)
                sent.append((ahead, ticket))
                if ticket is None:    # the converter has enough: this one is made here too
                    break
            yield block, self.json_keyed(block, file_name, time_index)
            for ahead, ticket in sent:
                yield ahead, (self.json_keyed(ahead, file_name, time_index) if ticket is None
                              else converter.result(ticket))

    def json_keyed(self, block, file_name, time_index):
        """write()'s JSON of a block's records as a catjson.Lines, and their time keys when
        every time column is a number (else None: a key then depends on the record before,
        which may be in the block before)."""
        lines, times = self._json_block(block, file_name, time_index)
        if times is not None:          # the time column as the JSON's split cut it
            try:
                return lines, list(map(int, times))
            except ValueError:
                pass
        return lines, None

    def _json_block(self, block, file_name, time_index):
        """write()'s JSON of a block's records as a catjson.Lines, and their time column
        (bytes) when the JSON's split cut it, else None."""
        if self._templated:
            first = block.find(b"\n")
            count = (block.count(b"|", 0, first) if first >= 0 else block.count(b"|")) + 1
            if catjson.uniform(block, count) and catjson.utf8(block):
                made = self._uniform_json(block, count, file_name, time_index)
                if made is not None:
                    (data, values, times), (_, scale, extra) = made
                    cum = list(accumulate(map(len, values), initial=0))
                    return catjson.Lines(memoryview(data), cum, scale, extra), times
        records = reader.split_block(block)
        lines, times = self._json_chunk(records, file_name, time_index)
        cum = list(accumulate(map(len, lines), initial=0))
        lines.append(b"")             # for the newline after the last line
        return catjson.Lines(memoryview(b"\n".join(lines)), cum, 1, 1), times

    def write_lines(self, lines):
        """Lines (bytes without their newline) to print, written a block at a time."""
        self._pending += lines
        if len(self._pending) >= WRITE_LINES:
            self._write_pending()

    def write_block(self, data):
        """Lines to print, each with its newline, as one bytes-like: written WRITE_SIZE
        bytes at a time."""
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= WRITE_SIZE:
            self._write_pending()

    def _write_pending(self):
        pending, self._pending = self._pending, []
        if self.json:
            self._pending_size = 0
            self.out.write(b"".join(pending))
            return
        pending.append(b"")           # the newline after the last line
        self.out.write(b"\n".join(pending))

    def write_records(self, records, file_name):
        """A run of records (bytes without their newline) from one file, written now."""
        lines = self._json_chunk(records, file_name, None)[0] if self.json else records
        self.out.write(b"\n".join(lines) + b"\n")

    def _json_chunk(self, records, file_name, time_index):
        """What write() prints for each of `records`, and their time column (bytes, from
        the same split) when every batch had one; else None."""
        lines, times = [], []
        for start in range(0, len(records), JSON_BATCH):
            batch_lines, batch_times = self._json_batch(records[start:start + JSON_BATCH],
                                                        file_name, time_index)
            lines += batch_lines
            if times is not None and batch_times is not None:
                times += batch_times
            else:
                times = None
        return lines, times

    def _json_batch(self, batch, file_name, time_index):
        if not self._templated:
            return [self.json_line(raw, file_name) for raw in batch], None
        text = b"\n".join(batch)
        count = batch[0].count(b"|") + 1
        if catjson.uniform(text, count) and catjson.utf8(text):
            return self._column_lines(text, count, file_name, time_index)
        if catjson.needs_no_escape(text, len(batch) - 1):
            return self._template_lines(batch, text, file_name), None
        # Some records need JSON escapes or are not UTF-8: those the general way, the
        # others from the templates still.
        plain = list(map(catjson.needs_no_escape, batch))
        good = list(compress(batch, plain))
        good_lines = iter(self._template_lines(good, b"\n".join(good), file_name))
        return [next(good_lines) if ok else self.json_line(raw, file_name)
                for raw, ok in zip(batch, plain)], None

    def _template_lines(self, batch, text, file_name):
        """write()'s JSON of records that need no JSON escaping and are UTF-8 (`text` is
        them joined by newlines), formatted from templates: json.dumps's output, byte for
        byte."""
        if batch:
            count = batch[0].count(b"|") + 1
            if catjson.uniform(text, count):
                return self._column_lines(text, count, file_name, None)[0]
        lines = []
        for raw in batch:
            values = raw.split(b"|")
            template = self._template_for(file_name, len(values))
            if template is None:
                lines.append(self.json_line(raw, file_name))
                continue
            if self.decode and ENCODED_DELIMITER in raw:
                values = [v.replace(ENCODED_DELIMITER, b"|") for v in values]
            lines.append(template % (tuple(values) * 2 if self.keys else tuple(values)))
        return lines

    def _column_lines(self, text, count, file_name, time_index):
        """_uniform_json() as a list of lines (without their newlines) and the time column."""
        made = self._uniform_json(text, count, file_name, time_index)
        if made is None:
            return [self.json_line(raw, file_name) for raw in text.split(b"\n")], None
        data, _, times = made[0]
        lines = data.split(b"\n")
        lines.pop()                   # after the last newline
        return lines, times

    def _uniform_json(self, text, count, file_name, time_index):
        """catjson.uniform_json() and the layout used; None when the names are not UTF-8."""
        made = self._layout_for(file_name, count)
        if made is None:
            return None
        return catjson.uniform_json(text, count, made[0], bool(self.keys), self.decode,
                                    time_index), made

    def _layout_for(self, file_name, count):
        key = (file_name, count)
        if key not in self._layouts:
            pieces = self._pieces_for(file_name, count)
            self._layouts[key] = None if pieces is None else \
                catjson.make_layout(pieces, bool(self.keys), count)
        return self._layouts[key]

    def _pieces_for(self, file_name, count):
        key = (file_name, count)
        if key not in self._pieces:
            self._pieces[key] = catjson.make_pieces(self.table, file_name, self.keys, count)
        return self._pieces[key]

    def _template_for(self, file_name, count):
        """A bytes %-template of write()'s JSON for a record of `count` values, each value
        a %s (twice when the record dict is printed too); None when the table, file or key
        names are not UTF-8 (write() then escapes the whole line)."""
        key = (file_name, count)
        if key not in self._templates:
            pieces = self._pieces_for(file_name, count)
            self._templates[key] = None if pieces is None else catjson.template(pieces)
        return self._templates[key]

    def json_line(self, raw, file_name):
        """The JSON object of one record (bytes without the newline): the general way."""
        values = reader.parse_record(raw, decode=self.decode)
        obj = {"table": self.table, "file": file_name, "values": values}
        if self.keys:
            obj["record"] = reader.name_values(values, self.keys)
        try:
            return json.dumps(obj, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            # bytes that are not UTF-8 (kept as surrogate escapes) come out as \udcXX escapes:
            # still valid JSON, nothing lost
            return json.dumps(obj).encode()

    def write(self, raw, file_name):
        self.out.write((self.json_line(raw, file_name) if self.json else raw) + b"\n")

    def flush(self):
        if self._pending:
            self._write_pending()
        self.out.flush()


def run(command, argv):
    doc = CAT_DOC if command == "cat" else FOLLOW_DOC
    parser = argparse.ArgumentParser(prog="kamflat " + command, description=doc)
    add_common_arguments(parser)
    if command == "cat":
        parser.add_argument("--rotated", action="store_true",
                            help="also rotated files (acc_129.log.1, -20260101, .gz/.bz2/.xz)")
    else:
        parser.add_argument("--rotated", action="store_true",
                            help="also the uncompressed rotated files there now (else skipped)")
        parser.add_argument("--new", action="store_true",
                            help="only records written from now on (like tail -n0)")
        parser.add_argument("--poll", action="store_true",
                            help="poll the directory instead of using inotify")
        parser.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
        parser.add_argument("--count", type=int, metavar="N", help="stop after N records")
    args = parser.parse_args(argv)
    try:
        source = Source(args)
        printer = Printer(args, source)
        (cat if command == "cat" else follow)(args, source, printer)
    except (ToolError, catproc.ConverterFailed) as exc:
        print("kamflat %s: %s" % (command, exc), file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `kamflat cat acc | head`: the reader is gone, which is fine; keep Python from
        # complaining when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print("kamflat %s: %s" % (command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0


def cat(args, source, printer):
    catproc.widen_pipe(printer.out)
    files = reader.list_table_files(source.directory, source.table, args.rotated)
    unreadable = []

    def on_unreadable(error):   # the other files are still printed; the status says it
        print("kamflat cat: %s" % error, file=sys.stderr, flush=True)
        unreadable.append(error)
    blocks = [reader.read_file_blocks(source.directory, f, on_unreadable) for f in files]
    converter = None
    if printer.json and catproc.worth_splitting(source.directory, files):
        converter = catproc.Converter(printer, [f.name for f in files], source.time_index)
    try:
        if converter is not None:
            try:
                converter.start()
            except OSError:            # no fork (process limit, memory): one process then
                converter.close()
                converter = None
        _print_merged(printer, files, blocks, source.time_index, converter)
    finally:
        if converter is not None:
            converter.close()   # a ConverterFailed is a ToolError's line and status
    if unreadable:
        raise ToolError("%d file%s left out or read only in part (above)"
                        % (len(unreadable), "" if len(unreadable) == 1 else "s"))


def _print_merged(printer, files, blocks, time_index, converter=None):
    """Each file's blocks turned into what is printed, then merged and printed."""
    streams = [printer.chunks(file_blocks, f.name, time_index, converter)
               for f, file_blocks in zip(files, blocks)]
    if time_index is None:
        runs = (lines for stream in streams for lines, _ in stream)
        if printer.json:
            runs = (lines.data for lines in runs)
    else:
        runs = (lines for _, lines in reader.merge_keyed(streams))
    write = printer.write_block if printer.json else printer.write_lines
    try:
        for lines in runs:
            write(lines)
    finally:
        printer.flush()         # what was merged so far, also when interrupted


def follow(args, source, printer):
    from kamflat.flatstore.follow import Follower

    def notice(message):
        print("kamflat follow: %s" % message, file=sys.stderr, flush=True)
    mode = "poll" if args.poll else "auto"
    with Follower(source.directory, source.table, mode=mode, from_end=args.new,
                  rotated=args.rotated, on_notice=notice) as follower:
        seen = 0
        for record in follower.records(timeout=args.timeout):
            printer.write(record.raw, record.file)
            printer.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                return


def cat_main(argv):
    return run("cat", argv)


def follow_main(argv):
    return run("follow", argv)
