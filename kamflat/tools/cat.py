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
import re
import sys
from itertools import repeat

from kamflat.flatstore import reader

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
    """Writes records to stdout as raw lines or JSON objects."""

    def __init__(self, args, source):
        self.json = args.json
        self.decode = args.decode
        self.table = source.table
        self.keys = source.keys
        self.out = sys.stdout.buffer
        # The JSON of a record is written from a template per file and field count when
        # the record's text needs no JSON escaping (see write_records); with repeated
        # keys or one named _extra the record dict is not a plain zip: one at a time.
        self._templates = {}
        self._templated = len(set(self.keys)) == len(self.keys) and "_extra" not in self.keys

    def write_records(self, records, file_name):
        """A run of records (bytes without their newline) from one file."""
        if not self.json:
            self.out.write(b"\n".join(records) + b"\n")
            return
        if self._templated:
            text = b"\n".join(records)
            try:
                text = text.decode()
            except UnicodeDecodeError:
                text = None        # bytes that are not UTF-8: the general way
            if text is not None and not _JSON_SPECIAL.search(text):
                self.out.write(self._json_lines(text, file_name).encode() + b"\n")
                return
        for raw in records:
            self.write(raw, file_name)

    def _json_lines(self, text, file_name):
        """What write() prints for each line of `text` (which has nothing JSON escapes),
        formatted from templates: json.dumps's output, byte for byte."""
        lines = text.split("\n")
        count = lines[0].count("|") + 1
        if list(map(str.count, lines, repeat("|"))).count(count - 1) == len(lines):
            # Every record has `count` fields: format them column-wise, all in C calls.
            fields = text.replace("\n", "|").split("|")
            if self.decode and reader.ENCODED_DELIMITER in text:
                fields = list(map(str.replace, fields, repeat(reader.ENCODED_DELIMITER),
                                  repeat("|")))
            columns = [fields[i::count] for i in range(count)]
            rows = zip(*columns, *columns) if self.keys else zip(*columns)
            return "\n".join(map(self._template_for(file_name, count).__mod__, rows))
        out = []
        for line in lines:
            values = line.split("|")
            if self.decode and reader.ENCODED_DELIMITER in line:
                values = [reader.decode_value(v) for v in values]
            template = self._template_for(file_name, len(values))
            out.append(template % (tuple(values) * 2 if self.keys else tuple(values)))
        return "\n".join(out)

    def _template_for(self, file_name, count):
        template = self._templates.get((file_name, count))
        if template is None:
            template = self._templates[file_name, count] = self._template(file_name, count)
        return template

    def _template(self, file_name, count):
        """A %-template of write()'s JSON for a record of `count` values, each value a
        %s inside quotes (twice when the record dict is printed too)."""
        def quoted(text):
            return json.dumps(text, ensure_ascii=False).replace("%", "%%")
        fields = ", ".join(['"%s"'] * count)
        head = "{%s: %s, %s: %s, %s: [%s]" % (
            quoted("table"), quoted(self.table), quoted("file"), quoted(file_name),
            quoted("values"), fields)
        if not self.keys:
            return head + "}"
        named = ['%s: "%%s"' % quoted(key) for key in self.keys[:count]]
        if count > len(self.keys):
            named.append('%s: [%s]' % (quoted("_extra"),
                                       ", ".join(['"%s"'] * (count - len(self.keys)))))
        return head + ", %s: {%s}}" % (quoted("record"), ", ".join(named))

    def write(self, raw, file_name):
        if not self.json:
            self.out.write(raw + b"\n")
            return
        values = reader.parse_record(raw, decode=self.decode)
        obj = {"table": self.table, "file": file_name, "values": values}
        if self.keys:
            obj["record"] = reader.name_values(values, self.keys)
        try:
            line = json.dumps(obj, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            # bytes that are not UTF-8 (kept as surrogate escapes) come out as \udcXX escapes:
            # still valid JSON, nothing lost
            line = json.dumps(obj).encode()
        self.out.write(line + b"\n")

    def flush(self):
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
    except ToolError as exc:
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


# What json.dumps escapes in a string (the newline is the record separator here).
_JSON_SPECIAL = re.compile('[\x00-\x09\x0b-\x1f"\\\\]')


def cat(args, source, printer):
    for file_name, records in reader.read_table_chunks(
            source.directory, source.table, args.rotated, source.time_index):
        printer.write_records(records, file_name)


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
