"""`kamflat gen`: realistic acc records as ingest JSON lines, at a rate, for a count or a time.

    kamflat gen [-f FILE | --socket PATH | --output FILE|-] --count N | --seconds S
                [--rate R] [--extra] [--edge-cases [pipe,utf8,percent,empty,long]] [--seed N]

What a record stream looks like: calls arrive at random (Poisson) times; an answered call
gives an INVITE record (200 OK, tm-style: the To tag of the 200 is in to_tag) and, when the
call ends, a BYE record with the same callid, from_tag and to_tag (what CGRateS pairs on); a
failed call (486, 487, 408, ...) gives one record in missed_calls. Records come in the order
of their time column.

CallGenerator and TokenBucket are pure (no clock, no IO: time is passed in), so a seed gives
the same records every run; main() is the IO around them.
"""
import heapq
import itertools
import json
import random
import sys
import time

from kamflat.tools import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, argument_parser

EDGE_CASES = ("pipe", "utf8", "percent", "empty", "long")
EXTRA_COLUMNS = ("src_user", "src_domain", "dst_ouser")   # acc db_extra "src_user=$fU;..."
FIXED_START = 1795737600          # 2026-11-27 00:00:00 UTC: the clock of seeded runs

FAILURES = [  # (code, reason, weight): what failed INVITEs end with
    ("486", "Busy Here", 30), ("487", "Request Terminated", 30),
    ("408", "Request Timeout", 12), ("480", "Temporarily Unavailable", 12),
    ("404", "Not Found", 8), ("603", "Decline", 5), ("503", "Service Unavailable", 3)]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
DOMAINS = ["example.com", "voip.example.net", "sip.example.org"]


class CallGenerator:
    """Records of simulated calls, in time order.

    cps: call attempts per simulated second; answer_ratio: share answered; mean_duration:
    seconds an answered call lasts (exponential, at least 1); edge_cases: names from
    EDGE_CASES, one of which is applied to about one call in ten.
    """

    def __init__(self, seed=None, start=FIXED_START, cps=10.0, answer_ratio=0.8,
                 mean_duration=30.0, extra=False, edge_cases=(), acc_table="acc",
                 missed_table="missed_calls"):
        unknown = set(edge_cases) - set(EDGE_CASES)
        if unknown:
            raise ValueError("unknown edge case %s (known: %s)"
                             % (", ".join(sorted(unknown)), ", ".join(EDGE_CASES)))
        self.rng = random.Random(seed)
        self.clock = float(start)
        self.cps = cps
        self.answer_ratio = answer_ratio
        self.mean_duration = mean_duration
        self.extra = extra
        self.edge_cases = tuple(edge_cases)
        self.acc_table = acc_table
        self.missed_table = missed_table
        self._due = []        # heap of (time, seq, record): records of calls under way
        self._seq = 0
        self.counts = {acc_table: 0, missed_table: 0}

    def records(self, count=None):
        """Yield records; with `count`, exactly that many and every answered call has its BYE."""
        emitted = 0
        while count is None or emitted < count:
            room = None if count is None else count - emitted - len(self._due)
            if self._due and (room == 0 or self._due[0][0] <= self.clock):
                record = heapq.heappop(self._due)[2]
                self.counts[record["table"]] += 1
                emitted += 1
                yield record
            else:
                self._new_call(must_fail=(room == 1))
                self.clock += self.rng.expovariate(self.cps)

    def hang_up_all(self):
        """The records still due (BYEs of calls still up...), in time order: ends a timed run."""
        out = []
        while self._due:
            record = heapq.heappop(self._due)[2]
            self.counts[record["table"]] += 1
            out.append(record)
        return out

    def _new_call(self, must_fail):
        """Start a call now: schedule its one (failed) or two (answered) records."""
        rng = self.rng
        call = {
            "from_tag": "%08x" % rng.getrandbits(32),
            "to_tag": "%08x" % rng.getrandbits(32),
            "callid": "%016x@10.0.%d.%d" % (rng.getrandbits(64), rng.randrange(256),
                                            rng.randrange(1, 255)),
            "src_user": rng.choice(USERS + ["+4930%07d" % rng.randrange(10 ** 7)]),
            "src_domain": rng.choice(DOMAINS),
            "dst_ouser": rng.choice(USERS + ["+4940%07d" % rng.randrange(10 ** 7)]),
        }
        if self.edge_cases and rng.random() < 0.1:
            self._apply_edge_case(call, rng.choice(self.edge_cases))
        ring = self.clock + rng.uniform(0.5, 20.0)      # the final reply comes after ringing
        if must_fail or rng.random() >= self.answer_ratio:
            code, reason = rng.choices([f[:2] for f in FAILURES], [f[2] for f in FAILURES])[0]
            if code == "408":  # a local timeout: no reply ever came, so no To tag
                call["to_tag"] = ""
            self._schedule(ring, self._record(self.missed_table, "INVITE", call, code, reason, ring))
            return
        end = ring + max(1.0, rng.expovariate(1.0 / self.mean_duration))
        self._schedule(ring, self._record(self.acc_table, "INVITE", call, "200", "OK", ring))
        self._schedule(end, self._record(self.acc_table, "BYE", call, "200", "OK", end))

    def _schedule(self, when, record):
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, record))

    def _apply_edge_case(self, call, case):
        if case == "pipe":        # Call-ID with the delimiter in it (kamailio PR #1262)
            call["callid"] = call["callid"].replace("@", "|pipe|@")
        elif case == "utf8":
            call["src_user"] = self.rng.choice(["jürgen", "用户", "Zoë"])
            call["callid"] = "ü-" + call["callid"]
        elif case == "percent":   # `%` is never escaped: "a%7Cb" looks like an encoded "a|b"
            call["src_user"] = "a%7Cb"
            call["callid"] = "100%-" + call["callid"]
        elif case == "empty":     # no From tag, no user part
            call["from_tag"] = ""
            call["src_user"] = ""
        elif case == "long":      # Kamailio never truncates (an 8,012-char Call-ID was seen)
            call["callid"] = "L" * 8000 + call["callid"]

    def _record(self, table, method, call, code, reason, when):
        values = [method, call["from_tag"], call["to_tag"], call["callid"], code, reason, int(when)]
        if self.extra:
            values += [call[name] for name in EXTRA_COLUMNS]
        return {"table": table, "values": values}


class TokenBucket:
    """Rate limit: `rate` tokens per second, at most `burst` saved up (pure: pass the time)."""

    def __init__(self, rate, burst=None, now=0.0):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate / 20.0))
        self.tokens = self.burst
        self.stamp = now

    def take(self, now, wanted):
        """How many of `wanted` may go now (they are taken), and if none, seconds to wait."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        allowed = min(int(self.tokens + 1e-9), wanted)   # 1e-9: float dust must not cost a wait
        if allowed:
            self.tokens -= allowed
            return allowed, 0.0
        return 0, (1.0 - self.tokens) / self.rate


# ---- IO -----------------------------------------------------------------------------------

BLOCK_RECORDS = 256


class Run:
    """One `kamflat gen` run: paces the records into JSON-line blocks and keeps the score."""

    def __init__(self, generator, count, seconds, rate, progress):
        self.generator = generator
        self.count = count
        self.seconds = seconds
        self.bucket = TokenBucket(rate, now=time.monotonic()) if rate else None
        self.progress = progress
        self.sent = 0
        self.errors = 0
        self.started = time.monotonic()
        self._shown = self.started

    def blocks(self):
        """JSON-line blocks (bytes), paced by the rate, until the count or the time is up."""
        records = self.generator.records(self.count)
        deadline = None if self.seconds is None else self.started + self.seconds
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                tail = self.generator.hang_up_all()
                if tail:
                    yield self._encode(tail)
                return
            wanted = BLOCK_RECORDS
            if self.bucket:
                wanted, wait = self.bucket.take(now, BLOCK_RECORDS)
                if not wanted:
                    time.sleep(wait if deadline is None else min(wait, max(0.0, deadline - now)))
                    continue
            batch = list(itertools.islice(records, wanted))
            if not batch:
                return
            yield self._encode(batch)

    def _encode(self, batch):
        self.sent += len(batch)
        self.show_progress()
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch).encode()

    def on_error(self, line, message):
        self.errors += 1
        if self.errors <= 10:
            print("kamflat gen: line %s refused: %s" % (line, message), file=sys.stderr)

    def show_progress(self, final=False):
        now = time.monotonic()
        if not self.progress or (now - self._shown < 0.5 and not final):
            return
        self._shown = now
        rate = self.sent / max(now - self.started, 1e-9)
        end = "\n" if final else ""
        sys.stderr.write("\rkamflat gen: sent %d  %.0f records/s  errors %d%s"
                         % (self.sent, rate, self.errors, end))
        sys.stderr.flush()

    def summary(self):
        elapsed = time.monotonic() - self.started
        tables = ", ".join("%s %d" % item for item in self.generator.counts.items())
        return ("kamflat gen: %d records (%s) in %.2f s, %.0f records/s, %d errors"
                % (self.sent, tables, elapsed, self.sent / max(elapsed, 1e-9), self.errors))


def parse_args(argv):
    parser = argument_parser("kamflat gen", __doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-f", dest="config", metavar="FILE",
                       help="send to the ingest socket of this server config")
    where.add_argument("--socket", metavar="PATH", help="send to this ingest socket")
    where.add_argument("--output", metavar="FILE", help="write JSON lines to FILE (- = stdout)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--count", type=int, metavar="N", help="generate N records")
    size.add_argument("--seconds", type=float, metavar="S",
                      help="generate for S seconds, then end the calls still up")
    parser.add_argument("--rate", type=float, metavar="R",
                        help="records per second (default: as fast as possible)")
    parser.add_argument("--extra", action="store_true",
                        help="add db_extra columns: " + ", ".join(EXTRA_COLUMNS))
    parser.add_argument("--edge-cases", nargs="?", const=",".join(EDGE_CASES), default="",
                        metavar="LIST", help="about 1 call in 10 gets one of these (default "
                        "all): " + ",".join(EDGE_CASES))
    parser.add_argument("--cps", type=float, default=10.0,
                        help="call attempts per simulated second: how fast the time column "
                        "advances and how many calls are up at once (default 10)")
    parser.add_argument("--seed", type=int, help="random seed: the same records every run")
    parser.add_argument("--start", type=int, metavar="EPOCH",
                        help="time of the first call (default: now, or 2026-11-27 with --seed)")
    args = parser.parse_args(argv)
    for name in ("count", "seconds", "rate", "cps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error("--%s must be > 0" % name)
    return args


def main(argv):
    args = parse_args(argv)
    start = args.start if args.start is not None else (
        FIXED_START if args.seed is not None else int(time.time()))
    try:
        generator = CallGenerator(
            seed=args.seed, start=start, extra=args.extra,
            edge_cases=[c for c in args.edge_cases.split(",") if c], cps=args.cps,
            **table_names(args.config))
    except Exception as exc:   # ValueError, ConfigError: one clear line
        print("kamflat gen: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    run = Run(generator, args.count, args.seconds, args.rate, progress=sys.stderr.isatty())
    try:
        if args.output is not None:
            status = write_output(run, args.output)
        else:
            status = send(run, args)
    except KeyboardInterrupt:
        status = EXIT_REFUSED
    if status in (EXIT_USAGE, EXIT_UNREACHABLE):
        return status       # nothing was sent: the error line says it all, no summary
    run.show_progress(final=True)
    print(run.summary(), file=sys.stderr)
    return status


def table_names(config):
    """With -f, the config's acc tables (db_table_acc, db_table_missed_calls)."""
    if not config:
        return {}
    from kamflat.config.model import load_model
    model = load_model(config, serving=False)
    return {"acc_table": model.acc_table, "missed_table": model.missed_table}


def write_output(run, output):
    stream = sys.stdout.buffer if output == "-" else None
    try:
        stream = stream or open(output, "wb")
    except OSError as exc:
        print("kamflat gen: cannot write %s: %s" % (output, exc.strerror), file=sys.stderr)
        return EXIT_USAGE
    try:
        for block in run.blocks():
            stream.write(block)
            stream.flush()
    except BrokenPipeError:
        return EXIT_REFUSED
    finally:
        if stream is not sys.stdout.buffer:
            stream.close()
    return EXIT_OK


def send(run, args):
    from kamflat.client import send_bytes
    from kamflat.tools.send import exit_status_of, socket_path
    try:
        result = send_bytes(socket_path(args), run.blocks(), on_error=run.on_error)
    except Exception as exc:   # SendError, ConfigError: one clear line
        print("kamflat gen: %s" % exc, file=sys.stderr)
        return exit_status_of(exc)
    run.errors = result.error_count
    if result.stopped:
        print("kamflat gen: the server stopped before taking everything", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_REFUSED
