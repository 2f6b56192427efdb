"""The SIP front end's logic: answer a request statelessly and account it as acc does.

Pure: `AccHandler.handle(datagram, source)` takes the bytes of one UDP datagram and the
sender's address and returns an Outcome: the reply bytes (None for ACK and for
datagrams that are dropped), where to send them, the records to write as
[(table, values)], and a reason string when something was dropped or not accounted
(`reply, records = handler.handle(data, addr)` works; see Outcome).
It never raises for anything a client can send.

With no kamflat params the records equal what this Kamailio 5.6 route writes:

    if (is_method("INVITE|BYE")) { acc_db_request("200 OK", "acc"); sl_send_reply("200", "OK"); }

Columns: method (from CSeq, as acc), from_tag, to_tag (the request's), callid, sip_code,
sip_reason, time (epoch seconds), then the db_extra columns in order. A request whose
From header does not parse gets its reply but no record (acc_preparse_req fails).

kamflat's own params (modparam("kamflat", ...)):
- acc_methods "INVITE|BYE": the methods accounted.
- sip_reply "200 OK": the reply to every request except ACK; repeatable
  "METHOD[|METHOD...]=CODE REASON" overrides it per method, and the method name OTHER
  stands for every method that is not accounted (so "OTHER=404 Not here" gives the
  reference config's route exactly).
- sip_missed_calls 1: an accounted request answered with a code >= 300 is written to
  acc's db_table_missed_calls instead of db_table_acc (as acc's failed-transaction
  accounting does); 0 writes everything to db_table_acc.
- sip_server_header "kamflat (VERSION)": the Server header of replies ("" for none).
"""
import time

from kamflat import __version__

from kamflat.acc import ACC_COLUMNS, pv as pvar
from kamflat.proto.sip import SipError, build_reply, parse_request, reply_destination, to_tag_for

SERVER_HEADER = "kamflat (%s)" % __version__

# sl module statistics that have a counter of their own; other codes count per class.
_SL_CODES = {200, 202, 300, 301, 302, 400, 401, 403, 404, 407, 408, 483, 500}
# Methods 5.x kex counts in core:rcv_requests_<method> (core_stats.c)
PER_METHOD = {"ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS",
               "PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE"}


class Outcome:
    """What handle() decided. Unpacks as the pair `reply, records`:

    reply     bytes to send, None for ACK and dropped datagrams
    records   [(table, values)] for kamflat.flatstore.record.encode_record, in order
    reply_to  (ip, port[, ...]) to send the reply to (the source address, with the Via's
              port unless the Via has rport, as Kamailio's sl does)
    reason    why the datagram was dropped or not accounted (for the log), else None
    """
    # Slots, not a tuple with attributes: one is made per datagram, and a tuple subclass
    # would carry a __dict__ for reply_to and reason.
    __slots__ = ("reply", "records", "reply_to", "reason")

    def __init__(self, reply, records, reply_to=None, reason=None):
        self.reply = reply
        self.records = records
        self.reply_to = reply_to
        self.reason = reason

    def __iter__(self):
        return iter((self.reply, self.records))

    def __repr__(self):
        return "Outcome(%r, %r, %r, %r)" % (self.reply, self.records, self.reply_to,
                                            self.reason)


class ParamError(ValueError):
    """A kamflat SIP param with a bad value; the message names it."""


def parse_reply_spec(text, what="sip_reply"):
    """"486 Busy Here" -> (486, "Busy Here"); "486" -> (486, "")."""
    code, _, reason = text.strip().partition(" ")
    if not (code.isdigit() and len(code) == 3 and 200 <= int(code) <= 699):
        raise ParamError("%s: %r does not start with a final reply code 200..699"
                         % (what, text))
    return int(code), reason.strip()


def parse_methods(text, what="acc_methods"):
    methods = {m.strip().upper() for m in text.split("|") if m.strip()}
    if not methods:
        raise ParamError("%s: no method in %r" % (what, text))
    return methods


class AccHandler:
    """Stateless replies and acc records for SIP requests (see module docstring)."""

    def __init__(self, acc_methods="INVITE|BYE", reply="200 OK", reply_overrides=(),
                 db_extra="", table_acc="acc", table_missed="missed_calls",
                 missed_calls=True, server=SERVER_HEADER, clock=time.time):
        self.acc_methods = parse_methods(acc_methods)
        self.default_reply = parse_reply_spec(reply)
        self.overrides = {}
        for spec in reply_overrides:
            methods, eq, rest = spec.partition("=")
            if not eq:
                raise ParamError("sip_reply: %r is not METHOD=CODE REASON" % spec)
            code_reason = parse_reply_spec(rest, "sip_reply %s" % methods.strip())
            for m in parse_methods(methods, "sip_reply"):
                self.overrides[m] = code_reason
        try:
            self.extra = pvar.parse_db_extra(db_extra)
        except pvar.PvarError as e:
            raise ParamError(str(e)) from None
        self._extra_eval = [pvar.evaluator(spec) for _, spec in self.extra]
        self.keys = list(ACC_COLUMNS) + [column for column, _ in self.extra]
        self.table_acc = table_acc
        self.table_missed = table_missed
        self.missed_calls = missed_calls
        self.server = server
        self.clock = clock
        self.counters = {}
        self._plans = {}

    def reply_for(self, method):
        """(code, reason) sent for a request of this method."""
        if method in self.overrides:
            return self.overrides[method]
        if method not in self.acc_methods and "OTHER" in self.overrides:
            return self.overrides["OTHER"]
        return self.default_reply

    def _plan(self, sent):
        """What is done with a request whose method is `sent` (as sent; decisions go by
        its uppercase): (code, code as text, reason, is ACK, accounted, table, [count,
        counter names] on receipt, [count, counter names] on a record). Memoised: one dict
        look-up per request instead of a dozen decisions, and one count per request that
        take_counters() spreads over the counter names."""
        method = sent.upper()
        code, reason = self.reply_for(method)
        received = ["core:rcv_requests"]
        if method in PER_METHOD:                # 5.x kex: rcv_requests_<method>
            received.append("core:rcv_requests_" + method.lower())
        if method == "ACK":
            received.append("sl:received_ACKs")
        else:
            received += _reply_counters(code)
        table, recorded = self.table_acc, ["kamflat:acc_records"]
        if code >= 300 and self.missed_calls:
            table = self.table_missed
            recorded.insert(0, "kamflat:acc_missed")
        plan = (code, str(code), reason, method == "ACK", method in self.acc_methods, table,
                [0, tuple(received)], [0, tuple(recorded)])
        if len(self._plans) >= 1000:         # methods are what clients send: bounded
            self._fold_counts()
            self._plans.clear()
        self._plans[sent] = plan
        return plan

    def _fold_counts(self):
        """Add the per-plan counts to the counters (and zero them)."""
        counters = self.counters
        for plan in self._plans.values():
            for cell in plan[6:]:
                n = cell[0]
                if n:
                    cell[0] = 0
                    for name in cell[1]:
                        counters[name] = counters.get(name, 0) + n

    def _count(self, name, n=1):
        self.counters[name] = self.counters.get(name, 0) + n

    def take_counters(self):
        """The counters since the last call, and reset them (for shared statistics)."""
        self._fold_counts()
        counters, self.counters = self.counters, {}
        return counters

    def handle(self, datagram, source):
        """One datagram from `source` (ip, port[, ...]) -> Outcome. Never raises for
        bad input: a malformed datagram gives Outcome(None, [], None, reason)."""
        try:
            request = parse_request(datagram)
        except SipError as e:
            return self._dropped(e)
        plan = self._plans.get(request.method)
        if plan is None:
            plan = self._plan(request.method)
        code, code_text, reason, is_ack, accounted, table, received, recorded = plan
        received[0] += 1
        if is_ack:
            reply = reply_to = None
        else:
            # (a To that has a tag keeps it: no tag to work out)
            reply = build_reply(request, code, reason,
                                "" if request.to.tag else to_tag_for(request),
                                source=source, server=self.server)
            reply_to = reply_destination(request, source)
        if not accounted:
            return Outcome(reply, [], reply_to)
        try:
            from_tag = request.from_addr().tag
        except SipError as e:
            self._count("kamflat:acc_skipped")
            return Outcome(reply, [], reply_to, "not accounted (as Kamailio): %s" % e)
        values = [request.cseq_method, from_tag or None, request.to.tag or None,
                  request.call_id or None, code_text, reason, int(self.clock())]
        if self._extra_eval:
            values += [ev(request, source) for ev in self._extra_eval]
        recorded[0] += 1
        return Outcome(reply, [(table, values)], reply_to)

    def _dropped(self, e):
        if e.reason == "response":
            self._count("core:rcv_replies")
            self._count("core:drop_replies")
        else:
            self._count("core:bad_msg_hdr" if e.reason == "bad_header"
                        else "kamflat:sip_malformed")
            self._count("core:drop_requests")
        return Outcome(None, [], None, "dropped (%s): %s" % (e.reason, e))


def _reply_counters(code):
    """The sl counters one reply with this code adds to."""
    names = ["sl:sent_replies"]
    if code >= 300:
        names.append("sl:sent_err_replies")
    names.append("sl:%d_replies" % code if code in _SL_CODES
                 else "sl:%dxx_replies" % (code // 100))
    return names

