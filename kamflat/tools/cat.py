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


def cat(args, source, printer):
    for record in reader.read_table(source.directory, source.table, args.rotated,
                                    source.time_index):
        printer.write(record.raw, record.file)


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
