"""The module parameters kamflat knows: one plain table, one line per parameter.

EMULATED[module][param] = (type, default, repeatable)
- type: INT, STR, or EITHER (declared by Kamailio with both an int and a string form,
  e.g. mi_fifo's fifo_user); a modparam value's type comes from its syntax ("quoted" is
  a string, 0660 is an int) and must fit, as in Kamailio's modparam.
- default: the module's own default (None: unset).
- repeatable: the param may be given several times and every value counts (pv shvset);
  otherwise the last value wins, as in Kamailio.

A module that is emulated has exactly these params: any other name is a config error.
To add a param, append one line to its module.
"""

INT, STR, EITHER = "int", "str", "int|str"

EMULATED = {
    "mi_fifo": {   # Kamailio 3.x classic MI FIFO
        "fifo_name":                   (STR, None, False),
        "fifo_mode":                   (INT, 0o660, False),
        "fifo_user":                   (EITHER, None, False),
        "fifo_group":                  (EITHER, None, False),
        "reply_dir":                   (STR, "/tmp/", False),
        "reply_indent":                (STR, "\t", False),
    },
    "db_flatstore": {
        "flush":                       (INT, 1, False),
        "encode_delimiter":            (INT, 1, False),
        # Exist in 5.x but only affect the SER DB API v2 path, never acc files:
        "field_delimiter":             (STR, "|", False),
        "record_delimiter":            (STR, "\n", False),
        "escape_char":                 (STR, "\\", False),
        "file_suffix":                 (STR, ".log", False),
    },
    "acc": {   # kamflat uses db_url, db_table_acc, db_table_missed_calls, db_extra
        "db_url":                      (STR, None, False),
        "db_table_acc":                (STR, "acc", False),
        "db_table_missed_calls":       (STR, "missed_calls", False),
        "db_extra":                    (STR, None, False),
        "db_flag":                     (INT, -1, False),
        "db_missed_flag":              (INT, -1, False),
        "db_insert_mode":              (INT, 0, False),
        "early_media":                 (INT, 0, False),
        "failed_transaction_flag":     (INT, -1, False),
        "failed_filter":               (STR, None, False),
        "report_ack":                  (INT, 0, False),
        "report_cancels":              (INT, 0, False),
        "multi_leg_info":              (STR, None, False),
        "detect_direction":            (INT, 0, False),
        "acc_prepare_flag":            (INT, -1, False),
        "acc_prepare_always":          (INT, 0, False),
        "reason_from_hf":              (INT, 0, False),
        "log_flag":                    (INT, -1, False),
        "log_missed_flag":             (INT, -1, False),
        "log_level":                   (INT, 1, False),
        "log_facility":                (STR, "LOG_DAEMON", False),
        "log_extra":                   (STR, None, False),
        "cdr_enable":                  (INT, 0, False),
        "cdr_log_enable":              (INT, 1, False),
        "cdr_start_on_confirmed":      (INT, 0, False),
        "cdr_facility":                (STR, "LOG_DAEMON", False),
        "cdr_extra":                   (STR, None, False),
        "cdr_start_id":                (STR, "start_time", False),
        "cdr_end_id":                  (STR, "end_time", False),
        "cdr_duration_id":             (STR, "duration", False),
        "cdr_expired_dlg_enable":      (INT, 0, False),
        "acc_method_column":           (STR, "method", False),
        "acc_from_tag_column":         (STR, "from_tag", False),
        "acc_to_tag_column":           (STR, "to_tag", False),
        "acc_callid_column":           (STR, "callid", False),
        "acc_sip_code_column":         (STR, "sip_code", False),
        "acc_sip_reason_column":       (STR, "sip_reason", False),
        "acc_time_column":             (STR, "time", False),
        "time_mode":                   (INT, 0, False),
        "time_attr":                   (STR, None, False),
        "time_exten":                  (STR, None, False),
        "time_format":                 (STR, None, False),
        "cdrs_table":                  (STR, None, False),
        "clone_msg":                   (INT, 1, False),
        "cdr_on_failed":               (INT, 1, False),
    },
    "kex": {},
    "pv": {
        "shvset":                      (STR, None, True),
        "varset":                      (STR, None, True),
        "avp_aliases":                 (STR, None, True),
    },
    "jsonrpcs": {   # Kamailio 5.x JSON-RPC; a relative fifo_name is under Config.run_dir
        "fifo_name":                   (STR, "kamailio_rpc.fifo", False),
        "fifo_mode":                   (INT, 0o660, False),
        "fifo_reply_dir":              (STR, "/tmp/", False),
        "fifo_user":                   (EITHER, None, False),
        "fifo_group":                  (EITHER, None, False),
        "transport":                   (INT, 6, False),
        "pretty_format":               (INT, 1, False),
        "dgram_socket":                (STR, "kamailio_rpc.sock", False),
        "dgram_workers":               (INT, 1, False),
        "dgram_timeout":               (INT, 2000, False),
        "dgram_mode":                  (INT, 0o660, False),
        "dgram_user":                  (EITHER, None, False),
        "dgram_group":                 (EITHER, None, False),
    },
    "ctl": {   # binrpc control socket(s) for kamcmd (default as in Debian's ctl.so)
        "binrpc":                      (STR, "unixs:/var/run/kamailio//kamailio_ctl", True),
        "fifo":                        (STR, None, True),
        "mode":                        (INT, 0o600, False),
        "user":                        (EITHER, None, False),
        "group":                       (EITHER, None, False),
        "binrpc_buffer_size":          (EITHER, 1024, False),
        "binrpc_max_body_size":        (INT, 32, False),
        "binrpc_struct_max_body_size": (INT, 8, False),
    },
    "kamflat": {   # kamflat's own: always available, never loadmodule'd
        "ingest_socket":               (STR, "", False),
        "encode_newlines":             (INT, 0, False),
        "rotate_timeout":              (INT, 2000, False),     # ms
        "sip_reply":                   (STR, "200 OK", True),
        "acc_methods":                 (STR, "INVITE|BYE", False),
        "sip_missed_calls":            (INT, 1, False),   # accounted >= 300 -> missed_calls
        "sip_server_header":           (STR, None, False),  # None: "kamflat (VERSION)"
        "ctl_max_connections":         (INT, 256, False),   # open ctl stream connections
        "ctl_idle_timeout":            (INT, 60000, False),   # ms without a byte: closed
        "stop_grace":                  (INT, 5000, False),     # ms a stop retries failing writes
        "ingest_max_connections":      (INT, 1024, False),
        "ingest_idle_timeout":         (INT, 60000, False),    # ms; 0: never
    },
}

# The pseudo-module that is always "loaded" for modparam.
KAMFLAT = "kamflat"

# Params that are accepted but change nothing kamflat does (warned about when set).
NO_EFFECT = {
    ("db_flatstore", "field_delimiter"): "acc files always use |",
    ("db_flatstore", "record_delimiter"): "acc files always end records with a newline",
    ("db_flatstore", "escape_char"): "acc files never use it",
    ("db_flatstore", "file_suffix"): "acc files always end in .log",
}

# Kamailio modules kamflat does not emulate but knows by name: loading one is fine (it is
# listed in the notice of what was parsed past) and its params are accepted untyped.
# The Debian 5.6 `kamailio` package set, plus the modules of the other packages, of
# 3.3 and 4.x that later went, and those 5.7 to 6.0 added.
KNOWN_NOT_EMULATED = frozenset("""
acc_diameter alias_db app_jsdt app_sqlang async auth auth_db auth_diameter auth_xkeys
avp avpops benchmark blst call_control call_obj carrierroute cfg_db cfg_rpc cfgt
cfgutils corex counters db2_ops db_cluster db_text debugger dialog dialplan dispatcher
diversion dmq dmq_usrloc domain domainpolicy drouting enum evrexec exec group htable
imc ipops keepalive kemix lcr log_custom lrkproxy mangler matrix maxfwd mediaproxy
mohqueue mqueue msilo msrp mtree nat_traversal nathelper nosip p_usrloc path pdb pdt
permissions pike pipelimit prefix_route pv_headers qos ratelimit regex registrar rr
rtimer rtjson rtpengine rtpproxy sanity sca sdpops seas secfilter sipcapture sipdump
sipjson sipt siptrace siputils sl sms smsops speeddial sqlops ss7ops sst statistics
statsc statsd stun tcpops textops textopsx timer tm tmrec tmx topoh topos tsilo uac
uac_redirect uid_auth_db uid_avp_db uid_domain uid_gflags uid_uri_db uri_db
userblocklist usrloc xhttp xhttp_prom xhttp_rpc xlog xprint
db_mysql db_postgres db_sqlite db_unixodbc db_redis db_mongodb db_berkeley db_oracle
ndb_redis ndb_mongodb tls outbound websocket presence presence_xml presence_dialoginfo
presence_mwi presence_profile presence_reginfo pua pua_dialoginfo pua_reginfo pua_usrloc
pua_xmpp rls xcap_client xcap_server app_lua app_python app_python3 app_perl app_ruby
http_client http_async_client jansson json jsonrpcc evapi kazoo rabbitmq nsq
geoip geoip2 ldap h350 snmpstats xmpp utils uuid lost phonenum cnxcc gzcompress
mi_rpc mi_datagram mi_xmlrpc mi_http xmlrpc xmlops sctp auth_radius acc_radius
misc_radius peering siputils cplc dialog_ng ims_usrloc_pcscf
acc_json app_java app_mono app_python3s auth_ephemeral auth_identity avp_radius cdp cdp_avp
cpl-c crypto db2_ldap db_cassandra db_perlvdb dlgs file_out gcrypt gflags ims_auth
ims_charging ims_dialog ims_diameter_server ims_icscf ims_ipsec_pcscf ims_isc ims_ocs ims_qos
ims_registrar_pcscf ims_registrar_scscf ims_usrloc_scscf influxdbc iptrtpproxy jwt kafka
log_systemd lwsc math memcached microhttpd misctest mmgeoip mqtt nats ndb_cassandra osp perl
perlvdb posops pua_bla pua_mi purple pvtpl rtp_media_server ruxc secsipid secsipid_proc
siprepo slack stirshaken sworker tlsa topos_htable topos_redis uri_radius xhttp_pi
""".split())
