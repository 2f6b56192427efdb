"""The statistics a server has from its start: every counter listed at 0 before it counts.

Kamailio registers its counters when a module initialises, so `get_statistics all` lists
them (and `get_statistics drop_requests` answers 0) before anything happened; kamflat
registers the same names, in the same groups, from `startup_statistics(model)`.

- core: kex's core_stats (Kamailio 3.3 modules_k/kex/core_stats.c core_stats[], the
  names 3.3 prints over MI and 5.6 over RPC), plus kamflat's process_restarts and
  writer_restarts;
- dns: failed_dns_request (core/dns_cache.c, listed by 3.3 and 5.6 alike);
- shmem: the core's shared memory statistics (kex core_stats.c shm_stats[]); kamflat has
  no Kamailio memory pool, so they stay 0;
- sl, when sl is loaded or the SIP front end runs: sl_stats.c's counters;
- kamflat's own: flatstore (per acc table written/failed, rotations), ingest (with an
  ingest_socket), kamflat (with the SIP front end). mi_fifo's are registered by the MI
  FIFO server itself.

Pure: names only.
"""

CORE = ("rcv_requests", "rcv_replies", "fwd_requests", "fwd_replies", "drop_requests",
        "drop_replies", "err_requests", "err_replies", "bad_URIs_rcvd", "unsupported_methods",
        "bad_msg_hdr")
KAMFLAT_CORE = ("process_restarts", "writer_restarts")
DNS = ("failed_dns_request",)
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
    names = [("core", n) for n in CORE + KAMFLAT_CORE]
    names += [("dns", n) for n in DNS] + [("shmem", n) for n in SHMEM]
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
