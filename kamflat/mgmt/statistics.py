"""The statistics a server has from its start: every counter listed at 0 before it counts.

Kamailio registers its counters when a module initialises, so `get_statistics all` lists
them (and `get_statistics drop_requests` answers 0) before anything happened; kamflat
registers the same names, in the same groups, from `startup_statistics(model)`.

- core: kex's core_stats (3.3 modules_k/kex/core_stats.c core_stats[], which MI lists
  as 3.3 does; 5.6 adds rcv_requests_<method>, listed over RPC as 5.6 does), plus
  kamflat's process_restarts and writer_restarts;
- dns: failed_dns_request (and 5.6's slow_dns_request over RPC); kamflat does no DNS;
- shmem: the core's shared memory statistics (kex core_stats.c shm_stats[]); kamflat has
  no Kamailio memory pool, so they stay 0;
- sl, when sl is loaded or the SIP front end runs: sl_stats.c's counters;
- kamflat's own: flatstore (per acc table written/failed, rotations), ingest (with an
  ingest_socket), kamflat (with the SIP front end). mi_fifo's are registered by the MI
  FIFO server itself.

Pure: names only.
"""
from kamflat.acc.logic import PER_METHOD

CORE = ("rcv_requests", "rcv_replies", "fwd_requests", "fwd_replies", "drop_requests",
        "drop_replies", "err_requests", "err_replies", "bad_URIs_rcvd", "unsupported_methods",
        "bad_msg_hdr")
# 5.x kex core_stats.c adds a received-requests counter per method (the SIP front end
# counts them); its per-class rcv_replies_* are left out: kamflat drops replies unread.
CORE_5 = tuple(sorted("rcv_requests_" + m.lower() for m in PER_METHOD))
KAMFLAT_CORE = ("process_restarts", "writer_restarts")
DNS = ("failed_dns_request",)
DNS_5 = ("slow_dns_request",)
# What 3.3 does not have, so MI (3.3) does not list it; RPC (5.6) lists everything.
NOT_IN_33 = frozenset([("core", n) for n in CORE_5] + [("dns", n) for n in DNS_5])
SHMEM = ("total_size", "used_size", "real_used_size", "max_used_size", "free_size",
         "fragments")
SL = ("1xx_replies", "200_replies", "202_replies", "2xx_replies", "300_replies",
      "301_replies", "302_replies", "3xx_replies", "400_replies", "401_replies", "403_replies",
      "404_replies", "407_replies", "408_replies", "483_replies", "4xx_replies", "500_replies",
      "5xx_replies", "6xx_replies", "xxx_replies", "sent_replies", "sent_err_replies",
      "received_ACKs")
FLATSTORE = ("rotations", "rotation_errors", "reopen_failures")
TABLE_COUNTERS = ("_written", "_failed")
INGEST = ("connections", "lines", "errors")
KAMFLAT_SIP = ("acc_records", "acc_missed", "acc_skipped", "sip_malformed")


def startup_statistics(model):
    """[(group, name)] a server with this config registers before its first fork."""
    names = [("core", n) for n in CORE + CORE_5 + KAMFLAT_CORE]
    names += [("dns", n) for n in DNS + DNS_5] + [("shmem", n) for n in SHMEM]
    if model.listen or "sl" in model.modules:
        names += [("sl", n) for n in SL]
    tables = dict.fromkeys((model.acc_table, model.missed_table))
    names += [("flatstore", table + suffix) for table in tables for suffix in TABLE_COUNTERS]
    names += [("flatstore", n) for n in FLATSTORE]
    if model.ingest_socket:
        names += [("ingest", n) for n in INGEST]
    if model.listen:
        names += [("kamflat", n) for n in KAMFLAT_SIP]
    return names


def as_kamailio_33(stats):
    """The statistics without those Kamailio 3.3 does not have (what MI lists)."""
    return [s for s in stats if (s.group, s.name) not in NOT_IN_33]
