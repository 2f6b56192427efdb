"""The config reader (kamflat/config.py) and `kamflat check`.

Table-driven: config text in, the Config's attributes out; broken configs in, the exact
`FILE:LINE: message` out (through the real `kamflat check` command). Real configs that
nobody here wrote (Debian's kamailio.cfg, the recorded 5.6 reference) must load.
"""
import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from conftest import DATA, REPO, run_kamflat
from kamflat.config.cfg import ConfigError, load_config, parse_config
from kamflat.config.model import under_run_dir

CFG = DATA / "cfg"
DEBIAN = CFG / "debian-kamailio.cfg"
MODS = 'loadmodule "kex.so"\nloadmodule "pv.so"\nloadmodule "db_flatstore.so"\n' \
       'loadmodule "acc.so"\nloadmodule "mi_fifo.so"\nloadmodule "jsonrpcs.so"\n' \
       'loadmodule "ctl.so"\nmodparam("mi_fifo", "fifo_name", "/tmp/f")\n'


def observe(config, key):
    """What a check key names: "children", "param:acc:db_url", "values:ctl:binrpc", ..."""
    what, _, rest = key.partition(":")
    if what == "param":
        return config.param(*rest.split(":"))
    if what == "values":
        return config.param_values(*rest.split(":"))
    if what == "where":
        return config.where(*rest.split(":"))
    if what == "ignored":
        return [(i.kind, i.name) for i in config.ignored]
    return getattr(config, what)


# (case id, config text, {check key: expected value})
GOOD_CASES = [
    ("empty config: Kamailio's defaults", "", {
        "children": 8, "listen": [], "modules": [], "db_dir": None, "ignored": [],
        "warnings": [], "param:kamflat:ingest_socket": "", "param:kamflat:rotate_timeout": 2000,
        "values:kamflat:sip_reply": ["200 OK"], "param:kamflat:acc_methods": "INVITE|BYE",
        "param:kamflat:encode_newlines": 0, "param:kamflat:sip_missed_calls": 1}),
    ("children", "children=4", {"children": 4}),
    ("children hex, spaced, with ;", "children = 0x10 ;", {"children": 16}),
    ("children from a define", "#!define N 3\nchildren=N", {"children": 3}),
    ("children last wins", "children=2\nchildren=5", {"children": 5}),
    ("listen as written, repeatable",
     "listen=udp:127.0.0.1:5060\nlisten=tcp:10.0.0.1:5061 advertise 1.2.3.4:5061\n"
     "listen = udp:[::1]:5060", {
         "listen": ["udp:127.0.0.1:5060", "tcp:10.0.0.1:5061 advertise 1.2.3.4:5061",
                    "udp:[::1]:5060"]}),
    ("listen from a define", "#!define L udp:127.0.0.1:5070\nlisten=L",
     {"listen": ["udp:127.0.0.1:5070"]}),
    ("mpath forms", 'mpath="/usr/lib/kamailio/modules/"', {"mpath": "/usr/lib/kamailio/modules/"}),
    ("loadpath without =", 'loadpath "/m"', {"mpath": "/m"}),
    ("loadmodule forms",
     'loadmodule "acc.so"\nloadmodule "/usr/lib/x86_64-linux-gnu/kamailio/modules/tm.so"\n'
     "loadmodule 'sl'\nloadmodule \"db_flatstore\"", {
         "modules": ["acc", "tm", "sl", "db_flatstore"],
         "ignored": [("module", "tm"), ("module", "sl")], "warnings": []}),
    ("unknown module: a warning, params untyped",
     'loadmodule "foo_bar.so"\nmodparam("foo_bar", "x", "1")\nmodparam("foo_bar", "x", 2)', {
         "modules": ["foo_bar"], "values:foo_bar:x": ["1", 2],
         "warnings": ["<string>:1: unknown module foo_bar: kamflat loads it without checks and "
                      "accepts its params untyped"]}),
    ("not emulated module params are untyped",
     'loadmodule "tm.so"\nmodparam("tm", "fr_timer", "30")', {"param:tm:fr_timer": "30"}),
    ("emulated defaults", MODS, {
        "param:mi_fifo:fifo_mode": 0o660, "param:mi_fifo:reply_dir": "/tmp/",
        "param:mi_fifo:reply_indent": "\t", "param:mi_fifo:fifo_user": None,
        "param:db_flatstore:flush": 1, "param:db_flatstore:encode_delimiter": 1,
        "param:acc:db_table_acc": "acc", "param:acc:db_table_missed_calls": "missed_calls",
        "param:acc:db_extra": None, "param:jsonrpcs:fifo_name": "kamailio_rpc.fifo",
        "param:jsonrpcs:fifo_reply_dir": "/tmp/", "param:jsonrpcs:fifo_mode": 0o660,
        "values:ctl:binrpc": ["unixs:/var/run/kamailio//kamailio_ctl"],
        "values:pv:shvset": [], "shv": {}, "db_dir": None, "run_dir": "/var/run/kamailio/"}),
    ("run_dir", 'loadmodule "jsonrpcs.so"\nrun_dir="/run/k"', {"run_dir": "/run/k"}),
    ("value forms", MODS + 'modparam("mi_fifo", "fifo_mode", 0600)\n'
     'modparam("jsonrpcs", "fifo_mode", 0x1b6)\nmodparam("db_flatstore", "flush", 0b)\n'
     'modparam("db_flatstore", "encode_delimiter", no)\nmodparam("acc", "db_flag", -1)\n'
     'modparam("acc", "db_missed_flag", yes)\nmodparam("ctl", "mode", 110b)', {
         "param:mi_fifo:fifo_mode": 0o600, "param:jsonrpcs:fifo_mode": 0o666,
         "param:db_flatstore:flush": 0, "param:db_flatstore:encode_delimiter": 0,
         "param:acc:db_flag": -1, "param:acc:db_missed_flag": 1, "param:ctl:mode": 6}),
    ("fifo_user and fifo_group take both forms", MODS +
     'modparam("mi_fifo", "fifo_user", "kamailio")\nmodparam("mi_fifo", "fifo_group", 1000)\n'
     'modparam("jsonrpcs", "fifo_user", 0)\nmodparam("ctl", "group", "adm")', {
         "param:mi_fifo:fifo_user": "kamailio", "param:mi_fifo:fifo_group": 1000,
         "param:jsonrpcs:fifo_user": 0, "param:ctl:group": "adm"}),
    ("strings: escapes, joined, raw, defines", MODS +
     '#!define DIR "flatstore:/var/log/acc"\nmodparam("acc", "db_url", DIR)\n'
     'modparam("acc", "db_extra",\n\t"src_user=$fU;"\n\t"dst_ouser=$tU")\n'
     "modparam('acc', 'db_table_acc', 'cdr\\n')\n"
     'modparam("mi_fifo", "reply_indent", "\\x20\\040")', {
         "param:acc:db_url": "flatstore:/var/log/acc", "db_dir": "/var/log/acc",
         "param:acc:db_extra": "src_user=$fU;dst_ouser=$tU",
         "param:acc:db_table_acc": "cdr\\n", "param:mi_fifo:reply_indent": "  ",
         "where:acc:db_url": "<string>:10", "where:acc:db_extra": "<string>:11"}),
    ("module name is a case-insensitive regex", MODS +
     'modparam("MI_FIFO|jsonrpcs", "fifo_mode", 0666)\nmodparam("db_flat.*", "flush", 0)\n'
     'modparam("ACC", "db_flag", 3)', {
         "param:mi_fifo:fifo_mode": 0o666, "param:jsonrpcs:fifo_mode": 0o666,
         "param:db_flatstore:flush": 0, "param:acc:db_flag": 3}),
    ("5.x anchoring: ^(acc|db)$ matches only whole names", MODS +
     'loadmodule "acc_diameter.so"\nmodparam("acc|tm", "db_flag", 4)',
     {"param:acc:db_flag": 4, "param:acc_diameter:db_flag": None}),
    ("a wide regex passes over kamflat", 'loadmodule "tm.so"\nmodparam(".*", "fr_timer", 1)',
     {"param:tm:fr_timer": 1}),
    ("repeatable params keep every value", MODS +
     'modparam("pv", "shvset", "sv=s:init")\nmodparam("pv", "shvset", "nv=i:1")\n'
     'modparam("pv", "shvset", "neg=i:-5")\nmodparam("ctl", "binrpc", "unix:/tmp/a")\n'
     'modparam("ctl", "binrpc", "tcp:127.0.0.1:2046")\n'
     'modparam("kamflat", "sip_reply", "200 OK")\nmodparam("kamflat", "sip_reply", "404 No")', {
         "values:pv:shvset": ["sv=s:init", "nv=i:1", "neg=i:-5"],
         "param:pv:shvset": "neg=i:-5", "shv": {"sv": "init", "nv": 1, "neg": -5},
         "values:ctl:binrpc": ["unix:/tmp/a", "tcp:127.0.0.1:2046"],
         "values:kamflat:sip_reply": ["200 OK", "404 No"]}),
    ("kamflat's own params", 'modparam("kamflat", "ingest_socket", "/tmp/i.sock")\n'
     'modparam("kamflat", "encode_newlines", 1)\nmodparam("kamflat", "rotate_timeout", 500)\n'
     'modparam("kamflat", "acc_methods", "INVITE")', {
         "param:kamflat:ingest_socket": "/tmp/i.sock", "param:kamflat:encode_newlines": 1,
         "param:kamflat:rotate_timeout": 500, "param:kamflat:acc_methods": "INVITE",
         "where:kamflat:ingest_socket": "<string>:1", "modules": []}),
    ("db_flatstore params that do not touch acc files", MODS +
     'modparam("db_flatstore", "file_suffix", ".txt")', {
         "param:db_flatstore:file_suffix": ".txt",
         "warnings": ['<string>:9: modparam("db_flatstore", "file_suffix") has no effect in '
                      'kamflat: acc files always end in .log']}),
    ("globals and route blocks are parsed past",
     '#!KAMAILIO\ndebug=2\nfork=yes\nlog_facility=LOG_LOCAL0\nlog_prefix="{$mt} "\n'
     'pstn.gw_ip = "" desc "PSTN GW Address"\nflags FLAG_A:1, FLAG_B\n'
     'request_route {\n\tif ($rU =~ "}") { xlog("{ $(ru{s.select,1,})\\n"); }\n'
     '\t# }\n\t/* } */ route(X);\n}\nroute[X] { exit; }\nevent_route[xhttp:request] { }\n'
     'failure_route["F"] {\n}\nonreply_route { }\nchildren=3', {
         "children": 3,
         "globals": {"debug": 2, "fork": 1, "log_facility": "LOG_LOCAL0",
                     "log_prefix": "{$mt} ", "pstn.gw_ip": '"" desc "PSTN GW Address"'},
         "compat": "KAMAILIO",
         "ignored": [("statement", "fork"), ("statement", "log_facility"),
                     ("statement", "log_prefix"), ("statement", "pstn.gw_ip"),
                     ("statement", "flags"), ("block", "request_route"),
                     ("block", "route[X]"), ("block", "event_route[xhttp:request]"),
                     ("block", "failure_route[F]"), ("block", "onreply_route")]}),
    ("a backslash continues a statement", "listen=udp:127.0.0.1:5060 \\\n  advertise 1.2.3.4",
     {"listen": ["udp:127.0.0.1:5060 advertise 1.2.3.4"]}),
    ("statements may share a line with ;", "children=2; debug=3;", {"children": 2,
                                                                     "globals": {"debug": 3}}),
    ("includes", "#!define X\n#!ifdef X\nchildren=6\n#!endif\n", {"children": 6}),
    ("6.0 socket block", "socket = {\n  bind = udp:127.0.0.1:5060;\n  name = \"s1\";\n}\n"
     "children=2", {
         "children": 2, "listen": [], "ignored": [("block", "socket")],
         "warnings": ["<string>:1: socket = { ... } is parsed past: kamflat's SIP front end "
                      "listens only on listen= sockets"]}),
    ("real core keywords of 3.3 to 6.0: parsed past, no warning",
     "#!SER\ndisable_tcp=yes\nasync_workers_group=\"name=reg;workers=4\"\n"
     "kemi.onsend_route_callback=\"ksr_onsend_route\"\ntos=IPTOS_LOWDELAY\n"
     'alias="a.example.com":5060\nlocal_route {\n}\n', {
         "compat": "SER", "warnings": [],
         "ignored": [("statement", "disable_tcp"), ("statement", "async_workers_group"),
                     ("statement", "kemi.onsend_route_callback"), ("statement", "tos"),
                     ("statement", "alias"), ("block", "local_route")]}),
    ("debug and run_dir are read", 'debug=3\nrun_dir="/tmp/r"\nrundir="/tmp/s"', {
        "ignored": [], "run_dir": "/tmp/s"}),
]


@pytest.mark.parametrize("text,checks", [c[1:] for c in GOOD_CASES],
                         ids=[c[0] for c in GOOD_CASES])
def test_good(text, checks):
    config = parse_config(text)
    assert {key: observe(config, key) for key in checks} == checks


def test_notice_names_what_was_parsed_past():
    config = parse_config('fork=no\nloadmodule "tm.so"\nroute { }\nrequest_route { }\nfork=no')
    assert config.notice() == ("parsed past, not emulated: statements fork; blocks route, "
                               "request_route; modules tm")
    assert parse_config("children=1").notice() == ""


def test_param_of_an_undeclared_name_is_a_programming_error():
    config = parse_config("")
    with pytest.raises(KeyError):
        config.param("db_flatstore", "flsh")
    assert config.param("not_loaded", "x") is None


# ---- real configs that nobody here wrote --------------------------------------------

def test_debian_kamailio_cfg_loads():
    config = load_config(str(DEBIAN))
    assert config.children == 8
    assert config.modules[:3] == ["jsonrpcs", "kex", "corex"]
    assert config.has_module("acc") and config.has_module("ctl")
    assert config.db_dir is None              # no db_url without WITH_ACCDB
    assert config.param("acc", "log_extra") == ("src_user=$fU;src_domain=$fd;src_ip=$si;"
                                                "dst_ouser=$tU;dst_user=$rU;dst_domain=$rd")
    assert config.param("acc", "log_flag") == 1 and config.param("acc", "log_missed_flag") == 2
    assert config.param("jsonrpcs", "pretty_format") == 1
    assert config.warnings == []
    blocks = [i.name for i in config.ignored if i.kind == "block"]
    assert blocks[:2] == ["request_route", "route[RELAY]"]
    assert "failure_route[MANAGE_FAILURE]" in blocks
    assert config.defines["FLT_ACC"] == "1" and config.defines["DBGLEVEL"] == "2"


def test_debian_kamailio_cfg_with_every_feature_but_accdb_loads():
    features = ["WITH_MYSQL", "WITH_AUTH", "WITH_IPAUTH", "WITH_USRLOCDB", "WITH_PRESENCE",
                "WITH_NAT", "WITH_RTPENGINE", "WITH_PSTN", "WITH_ALIASDB", "WITH_SPEEDDIAL",
                "WITH_MULTIDOMAIN", "WITH_TLS", "WITH_JSONRPC", "WITH_ANTIFLOOD",
                "WITH_BLOCK3XX", "WITH_VOICEMAIL", "WITH_DEBUG", "WITH_NATSIPPING"]
    config = load_config(str(DEBIAN), features)
    assert "db_mysql" in config.modules and "rtpengine" in config.modules
    assert config.param("usrloc", "db_url") == "mysql://kamailio:kamailiorw@localhost/kamailio"
    assert config.param("auth_db", "calculate_ha1") == 1        # `yes` is the number 1
    assert config.globals["debug"] == 3


def test_debian_with_mysql_accounting_is_refused_with_the_line():
    result = run_kamflat("check", "-f", DEBIAN, "-A", "WITH_MYSQL", "-A", "WITH_ACCDB")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ('%s:396: acc db_url "mysql://kamailio:kamailiorw@localhost/'
                             'kamailio" is not something kamflat writes: kamflat writes only '
                             'flatstore:DIR (db_flatstore files)\n' % DEBIAN)
    assert DEBIAN.read_text().splitlines()[395] == 'modparam("acc", "db_url", DBURL)'


def test_debian_imports_kamailio_local_cfg_beside_it(tmp_path):
    shutil.copy(DEBIAN, tmp_path / "kamailio.cfg")
    (tmp_path / "kamailio-local.cfg").write_text(
        '#!define WITH_ACCDB\n#!define DBURL "flatstore:/var/log/acc"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "kamailio.cfg"))
    assert str(caught.value) == ('%s/kamailio.cfg:396: acc db_url "flatstore:/var/log/acc" '
                                 'needs db_flatstore: add loadmodule "db_flatstore.so"'
                                 % tmp_path)


def test_kamailio_56_reference_cfg_loads():
    config = load_config(str(CFG / "kamailio-5.6-reference.cfg"))
    assert (config.children, config.listen, config.db_dir) == (
        4, ["udp:127.0.0.1:5070"], "/var/run/k56/acc")
    assert config.param("jsonrpcs", "fifo_name") == "/var/run/k56/kamailio_rpc.fifo"
    assert config.param("jsonrpcs", "fifo_mode") == 0o666
    assert config.param("jsonrpcs", "fifo_reply_dir") == "/tmp/"
    assert config.param_values("ctl", "binrpc") == ["unix:/var/run/k56/kamailio_ctl"]
    assert config.param("db_flatstore", "flush") == 1
    assert config.param("acc", "db_extra") == "src_user=$fU;src_domain=$fd;dst_ouser=$tU"
    assert config.modules == ["kex", "tm", "sl", "pv", "xlog", "textops", "ctl", "jsonrpcs",
                              "db_flatstore", "acc"]
    assert load_config(str(CFG / "kamailio-5.6-reference.cfg"),
                       ["FLUSH=0"]).param("db_flatstore", "flush") == 0


def test_kamailio_33_mi_classic_cfg_loads():
    """Written here from mi_classic_cases.json's server_config_facts."""
    facts = json.loads((DATA / "cfg" / "mi_classic_server_config_facts.json").read_text())
    config = load_config(str(CFG / "kamailio-3.3-mi-classic.cfg"))
    assert config.param("mi_fifo", "fifo_name") == facts["server_fifo"].split()[0]
    assert config.param("mi_fifo", "fifo_mode") == 0o660          # prw-rw----
    assert config.param("mi_fifo", "reply_dir") == "/tmp/"
    assert config.param("mi_fifo", "reply_indent") == "\t"
    assert config.shv == {"sv": "init", "nv": 1}
    assert config.children == 4 and config.listen == ["udp:127.0.0.1:5090"]
    assert config.modules[:4] == ["kex", "pv", "db_flatstore", "htable"]


def test_sample_config_loads_and_check_summarises_it():
    result = run_kamflat("check", "-f", REPO / "conf" / "kamflat.cfg")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "children=4 db_dir=/tmp/kamflat/acc mi_fifo=/tmp/kamflat/kamailio_fifo "
        "jsonrpc_fifo=/tmp/kamflat/kamailio_rpc.fifo ctl=unix:/tmp/kamflat/kamailio_ctl "
        "ingest_socket=/tmp/kamflat/ingest.sock flush=1\n")
    assert result.stderr == ("kamflat: notice: parsed past, not emulated: statements "
                             "log_stderror; blocks request_route; modules tm, sl, textops\n")
    other = run_kamflat("check", "-f", REPO / "conf" / "kamflat.cfg", "-A",
                        'ACCDIR="flatstore:/srv/acc"', "-A", "FLUSH=0")
    assert other.returncode == 0, other.stderr
    assert " db_dir=/srv/acc " in other.stdout and other.stdout.endswith(" flush=0\n")


def test_check_of_debian_cfg_refuses_it_as_serve_does():
    # Debian's config accounts to MySQL only when asked to: no flatstore directory, and
    # `kamflat serve` cannot run without one, so check says so too.
    result = run_kamflat("check", "-f", DEBIAN)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ('%s: no accounting directory: kamflat needs acc loaded with '
                             'modparam("acc", "db_url", "flatstore:/DIR")\n' % DEBIAN)


def test_check_of_a_missing_file():
    result = run_kamflat("check", "-f", "/nonexistent/k.cfg")
    assert (result.returncode, result.stderr) == (
        1, "/nonexistent/k.cfg: cannot read the config file: No such file or directory\n")


# ---- broken configs: the exact error, through `kamflat check` ----------------------

L = 'loadmodule "db_flatstore.so"\nloadmodule "acc.so"\n'   # two lines of modules

# (case id, config text, {extra file: text}, line, message)
BROKEN_CASES = [
    ("int param given a string", L + 'modparam("db_flatstore", "flush", "0")', {}, 3,
     'modparam("db_flatstore", "flush", "0"): flush takes an integer, got a string; write the '
     'number without quotes'),
    ("string param given an int", L + 'modparam("acc", "db_table_acc", 5)', {}, 3,
     'modparam("acc", "db_table_acc", 5): db_table_acc takes a string, got the integer 5; put '
     'it in double quotes'),
    ("unknown param of an emulated module", L + 'modparam("db_flatstore", "flsh", 1)', {}, 3,
     'modparam: module db_flatstore has no parameter "flsh"; did you mean flush? (its '
     'parameters: flush, encode_delimiter, field_delimiter, record_delimiter, escape_char, '
     'file_suffix)'),
    ("kex has no params", 'loadmodule "kex.so"\nmodparam("kex", "debug", 1)', {}, 2,
     'modparam: module kex has no parameter "debug" (its parameters: none)'),
    ("unknown kamflat param", 'modparam("kamflat", "ingest", "/tmp/s")', {}, 1,
     'modparam: module kamflat has no parameter "ingest"; did you mean ingest_socket? (its '
     'parameters: ingest_socket, encode_newlines, rotate_timeout, sip_reply, acc_methods, '
     'sip_missed_calls, sip_server_header, ctl_max_connections, ctl_idle_timeout, stop_grace, '
     'ingest_max_connections, ingest_idle_timeout)'),
    ("no module matches", 'loadmodule "tm.so"\nmodparam("acc", "db_flag", 1)', {}, 2,
     'modparam: no loaded module matches "acc"; load it first with loadmodule "acc.so" '
     '(loaded so far: tm)'),
    ("modparam before its loadmodule",
     'modparam("db_flatstore", "flush", 1)\nloadmodule "db_flatstore.so"', {}, 1,
     'modparam: no loaded module matches "db_flatstore"; load it first with loadmodule '
     '"db_flatstore.so" (loaded so far: none)'),
    ("module name is a bad regex", L + 'modparam("acc(", "db_flag", 1)', {}, 3,
     'modparam: module name "acc(" is not a valid regular expression'),
    ("value is an undefined define", L + 'modparam("acc", "db_url", DBURL)', {}, 3,
     "modparam value DBURL is neither a quoted string nor a number (is it a #!define that is "
     "not defined?)"),
    ("modparam without )", L + 'modparam("acc", "db_flag", 1\nchildren=2', {}, 4,
     "modparam(\"module\", \"param\", value): expected ')', found 'children'"),
    ("modparam module name unquoted", L + 'modparam(acc, "db_flag", 1)', {}, 3,
     "modparam: the module name must be a quoted string, got 'acc'"),
    ("int out of range", L + 'modparam("acc", "db_flag", 4294967296)', {}, 3,
     'modparam("acc", "db_flag", 4294967296): the value does not fit in a 32-bit int'),
    ("mysql db_url", L + '\nmodparam("acc", "db_url", "mysql://k:pw@localhost/kamailio")', {},
     4, 'acc db_url "mysql://k:pw@localhost/kamailio" is not something kamflat writes: kamflat '
        'writes only flatstore:DIR (db_flatstore files)'),
    ("flatstore without db_flatstore",
     'loadmodule "acc.so"\nmodparam("acc", "db_url", "flatstore:/var/log/acc")', {}, 2,
     'acc db_url "flatstore:/var/log/acc" needs db_flatstore: add loadmodule '
     '"db_flatstore.so"'),
    ("flatstore without a directory", L + 'modparam("acc", "db_url", "flatstore:")', {}, 3,
     'acc db_url "flatstore:" names no directory; expected flatstore:DIR'),
    ("one-character delimiters", L + 'modparam("db_flatstore", "field_delimiter", "||")', {},
     3, 'modparam("db_flatstore", "field_delimiter", "||"): must be exactly one character'),
    ("bad shvset", 'loadmodule "pv.so"\nmodparam("pv", "shvset", "x=y")', {}, 2,
     'modparam("pv", "shvset", "x=y"): expected "name=s:text" or "name=i:number"'),
    ("children as a string", 'children="4"', {}, 1,
     'children needs a number of worker processes, got 4'),
    ("children zero", "debug=2\nchildren=0", {}, 2,
     "children must be between 1 and 1024 (kamflat needs at least one writer process), got 0"),
    ("children without a value", "children=\n4", {}, 1, "children= needs a value on the same line"),
    ("mpath not a string", "mpath=/usr/lib", {}, 1, 'mpath needs a quoted "string", got /usr/lib'),
    ("loadmodule without quotes", "loadmodule acc.so", {}, 1,
     "loadmodule needs a quoted module file name, e.g. loadmodule \"acc.so\", got 'acc'"),
    ("loadmodule kamflat", 'loadmodule "kamflat.so"', {}, 1,
     'kamflat is not a loadable module: its params are always available as '
     'modparam("kamflat", ...)'),
    ("loadmodule twice", 'loadmodule "tm.so"\n\nloadmodule "/usr/lib/tm.so"', {}, 3,
     "module tm is already loaded (at {cfg}:1); Kamailio refuses to load a module twice"),
    ("a } too many", "request_route {\n\texit;\n}\n}\n", {}, 4,
     "unexpected '}': no block is open here"),
    ("unclosed route block", "request_route {\n\tif (a) {\n\t\texit;\n}\n", {}, 1,
     "request_route: this '{' is never closed (a '}' is missing before the end of the file)"),
    ("route without a block", "route[A]\n\texit;\n", {}, 2,
     "route[A] must be followed by a { block }: expected '{', found 'exit'"),
    ("unknown top-level word", "children=2\nfoo\n", {}, 2,
     "'foo' at the top level: expected name=value, loadmodule, modparam or a route block"),
    ("stray string at top level", '"x"', {}, 1,
     "the string \"x\" at the top level: expected name=value, loadmodule, modparam or a route "
     "block"),
    ("define twice", "#!define A 1\n#!define A 2\n", {}, 2,
     "A is already defined ({cfg}:1); use #!redefine to change it or #!trydef to keep the "
     "first value"),
    ("unclosed ifdef", "#!ifdef WITH_X\nchildren=2\n", {}, 1,
     "#!ifdef WITH_X is never closed: add #!endif after its block"),
    ("endif with a comment", "#!ifdef WITH_X\n#!endif # WITH_X\n", {}, 2,
     "#!endif must be alone on its line, found '# WITH_X' after it (Kamailio reads such a line "
     "as a comment); put comments on their own line"),
    ("missing include", 'children=1\ninclude_file "/nonexistent/x.cfg"\n', {}, 2,
     'cannot open included file "/nonexistent/x.cfg" (tried /nonexistent/x.cfg)'),
    ("an error inside an included file", 'include_file "{dir}/sub.cfg"\n',
     {"sub.cfg": "\n\nchildren=none\n"}, None,
     "{dir}/sub.cfg:3: children needs a number of worker processes, got none"),
    ("unclosed string", 'children=1\nlog_prefix="abc\n', {}, 2,
     'unclosed "string": no closing " before the end of the file'),
    ("unsupported directive", "#!defexp X 1+1\n", {}, 1,
     "#!%s is not supported by kamflat (it reads every directive of Kamailio 3.3-6.0 but the "
     "expression ones: define, trydef, redef, ifdef, ifndef, else, endif, subst, substdef, "
     "substdefs, undef, tryundef, defenv, defenvs, trydefenv, trydefenvs, include_file, "
     "import_file)" % "defexp"),
    ("defenv of a variable that is not set", "#!defenv X=KAMFLAT_TEST_UNSET\n", {}, 1,
     "#!defenv X=KAMFLAT_TEST_UNSET: the environment variable KAMFLAT_TEST_UNSET is not set"),
    ("undef of a name never defined", "#!undef X\n", {}, 1,
     "#!undef X: X is not defined (#!tryundef does not mind)"),
]


@pytest.mark.parametrize("text,files,line,message", [c[1:] for c in BROKEN_CASES],
                         ids=[c[0] for c in BROKEN_CASES])
def test_broken(tmp_path, text, files, line, message):
    cfg = tmp_path / "broken.cfg"
    cfg.write_text(text.replace("{dir}", str(tmp_path)))
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    message = message.replace("{cfg}", str(cfg)).replace("{dir}", str(tmp_path))
    expected = message if line is None else "%s:%d: %s" % (cfg, line, message)
    with pytest.raises(ConfigError) as caught:
        load_config(str(cfg))
    assert str(caught.value) == expected
    result = run_kamflat("check", "-f", cfg)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected + "\n")


def test_at_least_25_broken_configs():
    assert len(BROKEN_CASES) >= 25


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    'loadmodule "acc.so"', 'loadmodule "db_flatstore.so"', 'loadmodule "mi_fifo.so"',
    'modparam("acc", "db_url", "flatstore:/x")', 'modparam("db_flatstore", "flush", 0)',
    'modparam("db_flatstore", "flush", "0")', 'modparam(".*", "x", 1)', "children=4",
    "route[X] {", "}", "{", "#!ifdef A", "#!else", "#!endif", "#!define A", "A", '"', "'",
    "/*", "*/", "$(", "listen=", "=", ";", "(", ")", "modparam(", 'modparam("acc|',
    "0x", "101b", "-", "\\", "#", "//", "!!", "#!subst \"/a/b/\"", 'include_file "x"',
    "request_route { exit; }", "debug=2", "pstn.gw = 1", "loadmodule", "modparam"]) |
    st.text(max_size=10), max_size=12))
def test_random_configs_raise_only_config_errors(lines):
    try:
        parse_config("\n".join(lines), "fuzz.cfg")
    except ConfigError as e:
        assert str(e)


# ---- the same verdict as the real Kamailio 5.6 (`kamailio -c`) ----------------------

KAMAILIO = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin")
FS = 'listen=udp:127.0.0.1:5060\nloadmodule "db_flatstore.so"\n'
ACC = FS + 'loadmodule "tm.so"\nloadmodule "acc.so"\n'

# (case id, config text using only modules of Debian's kamailio package, accepted?)
AGREEMENT_CASES = [
    ("int param", FS + 'modparam("db_flatstore", "flush", 0)', True),
    ("int param given a string", FS + 'modparam("db_flatstore", "flush", "0")', False),
    ("string param given an int", ACC + 'modparam("acc", "db_table_acc", 5)', False),
    ("str and string are interchangeable", ACC + 'modparam("acc", "db_extra", "a=$fU")', True),
    ("unknown param", FS + 'modparam("db_flatstore", "flsh", 1)', False),
    ("no such module loaded", FS + 'modparam("acc", "db_flag", 1)', False),
    ("modparam before loadmodule", 'modparam("db_flatstore", "flush", 1)\n' + FS, False),
    ("case-insensitive regex", FS + 'modparam("DB_FLAT.*", "flush", 1)', True),
    ("yes, hex, octal, binary", FS + 'modparam("db_flatstore", "flush", yes)\n'
     'modparam("db_flatstore", "flush", 0x1)\nmodparam("db_flatstore", "flush", 0660)\n'
     'modparam("db_flatstore", "flush", 101b)', True),
    ("joined strings and raw strings", ACC + 'modparam("acc", "db_extra", "a=$fU;"\n "b=$tU")\n'
     "modparam('acc', 'db_table_acc', 'x')", True),
    ("defines", '#!define F 1\n#!trydef F 2\n#!redefine F 0\n' + FS +
     'modparam("db_flatstore", "flush", F)', True),
    ("define twice", "#!define F 1\n#!define F 2\n" + FS, False),
    ("undefined define as a value", FS + 'modparam("db_flatstore", "flush", F)', False),
    ("a comment in a define value", "#!define F 1 # c\n" + FS +
     'modparam("db_flatstore", "flush", F)', False),
    ("ifdef, else", "#!ifdef X\nbad bad\n#!else\n" + FS + "#!endif\n", True),
    ("unclosed ifdef", "#!ifdef X\n" + FS, False),
    ("endif with a comment", "#!ifdef X\n#!endif # X\n" + FS, False),
    ("stray endif", FS + "#!endif\n", False),
    ("nested comments", FS + "/* a /* b */ c */\nchildren=2", True),
    ("substdef", '#!substdef "/NAME/db_flatstore/"\n' + FS +
     'modparam("NAME", "flush", 1)', True),
    ("subst joins the next line's string", FS + '#!subst "/a/b/"\n"x"\n', False),
    ("loadmodule twice", FS + 'loadmodule "db_flatstore.so"', False),
    ("a } too many", FS + "request_route {\n\texit;\n}\n}\n", False),
    ("unclosed block", FS + "request_route {\n\tif (1) {\n\t\texit;\n}\n", False),
    ("unknown top-level word", FS + "foo\n", False),
    ("import_file of a missing file", FS + 'import_file "nope.cfg"\n', True),
    ("include_file of a missing file", FS + 'include_file "nope.cfg"\n', False),
    ("globals and a route block", "#!KAMAILIO\n" + FS + 'loadmodule "pv.so"\n'
     'debug=2\nfork=no\nchildren=2\n'
     'log_prefix="{$mt} "\nrequest_route {\n\tif ($rU == "}") { exit; } # }\n\tdrop;\n}\n',
     True),
]


@pytest.mark.skipif(KAMAILIO is None, reason="needs the kamailio binary (Debian kamailio)")
@pytest.mark.parametrize("text,accepted", [c[1:] for c in AGREEMENT_CASES],
                         ids=[c[0] for c in AGREEMENT_CASES])
def test_same_verdict_as_kamailio(tmp_path, text, accepted):
    cfg = tmp_path / "k.cfg"
    cfg.write_text(text)
    real = subprocess.run([KAMAILIO, "-c", "-f", str(cfg)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert (real.returncode == 0) == accepted, real.stderr
    try:
        load_config(str(cfg))
        ours = True
    except ConfigError:
        ours = False
    assert ours == accepted


@pytest.mark.skipif(KAMAILIO is None, reason="needs the kamailio binary (Debian kamailio)")
def test_kamailio_accepts_the_debian_cfg_too():
    real = subprocess.run([KAMAILIO, "-c", "-f", str(DEBIAN)], capture_output=True, text=True,
                          timeout=30)
    assert real.returncode == 0, real.stderr


def test_relative_paths_are_under_run_dir_as_kamailio_4_does():
    assert under_run_dir("/run/k/", "kamailio_rpc.fifo") == "/run/k/kamailio_rpc.fifo"
    assert under_run_dir("/run/k", "/tmp/x.fifo") == "/tmp/x.fifo"
    assert parse_config('rundir="/run/k/"').run_dir == "/run/k/"
    assert parse_config("").run_dir == "/var/run/kamailio/"
