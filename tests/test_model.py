"""The resolved model of a config (kamflat/config/model.py): config text in, model out.

Table-driven like test_config.py. The start errors are run through both `kamflat check`
and `kamflat serve`: they must refuse the same configs with the same FILE:LINE line.
"""
import shutil
import subprocess

import pytest

from conftest import DATA, run_kamflat
from kamflat.config.cfg import ConfigError, load_config, parse_config
from kamflat.config.model import log_level, resolve

CFG = DATA / "cfg"
ACC = ('loadmodule "db_flatstore.so"\nloadmodule "acc.so"\n'
       'modparam("acc", "db_url", "flatstore:/tmp/kf-model/acc")\n')     # 3 lines


def observe(model, key):
    """A dotted attribute path of the model; "places" lists (kind, path, statement, where)."""
    if key == "places":
        return [(p.kind, p.path, p.statement, p.where) for p in model.places()]
    if key == "listen":
        return [(e.spec, e.ipv6, e.host, e.port, e.where) for e in model.listen]
    if key == "ctl":
        return [(c.kind, c.target, c.where) for c in model.ctl]
    value = model
    for part in key.split("."):
        if isinstance(value, dict):
            value = value[part]
        else:
            value = getattr(value, part) if value is not None else None
    return value


# (case id, config text, {model key: expected})
GOOD = [
    ("defaults", ACC, {
        "children": 8, "run_dir": "/var/run/kamailio/", "debug": 0, "debug_set": False,
        "db_dir": "/tmp/kf-model/acc", "db_url": "flatstore:/tmp/kf-model/acc",
        "acc_table": "acc", "missed_table": "missed_calls", "db_extra": [], "flush": True,
        "encode_delimiter": True, "encode_newlines": False, "rotate_timeout": 2.0,
        "ingest_socket": None, "mi_fifo": None, "jsonrpc_fifo": None, "ctl": [],
        "listen": [], "sip": None, "places": []}),
    ("mi_fifo 4.x default: kamailio_fifo in run_dir", ACC + 'loadmodule "mi_fifo.so"', {
        "mi_fifo.path": "/var/run/kamailio/kamailio_fifo", "mi_fifo.where": "<string>:4",
        "mi_fifo.mode": 0o660, "mi_fifo.reply_dir": "/tmp/",
        "places": [("fifo", "/var/run/kamailio/kamailio_fifo", 'loadmodule "mi_fifo.so"',
                    "<string>:4")]}),
    ("mi_fifo relative name under rundir", 'rundir="/tmp/kfx"\n' + ACC +
     'loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "my_fifo")', {
         "mi_fifo.path": "/tmp/kfx/my_fifo", "mi_fifo.where": "<string>:6",
         "mi_fifo.statement": 'modparam("mi_fifo", "fifo_name", ...)'}),
    ("mi_fifo absolute name is kept", 'run_dir="/tmp/kfx"\n' + ACC +
     'loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "/tmp/k_fifo")',
     {"mi_fifo.path": "/tmp/k_fifo"}),
    ("jsonrpcs default under rundir (the rpc -f bug)", 'rundir="/tmp/kfx"\n' + ACC +
     'loadmodule "jsonrpcs.so"', {
         "jsonrpc_fifo.path": "/tmp/kfx/kamailio_rpc.fifo", "jsonrpc_fifo.where": "<string>:5",
         "jsonrpc_fifo.options": {"pretty_format": 1}}),
    ("jsonrpcs without the FIFO transport", ACC + 'loadmodule "jsonrpcs.so"\n'
     'modparam("jsonrpcs", "transport", 1)', {"jsonrpc_fifo": None}),
    ("run_dir and rundir are one value, the last wins", 'run_dir="/a"\nrundir="/b"\n' + ACC +
     'loadmodule "jsonrpcs.so"', {"run_dir": "/b", "jsonrpc_fifo.path": "/b/kamailio_rpc.fifo"}),
    ("ctl default", ACC + 'loadmodule "ctl.so"', {
        "ctl": [("unix", "/var/run/kamailio//kamailio_ctl", "<string>:4")]}),
    ("ctl default follows run_dir", 'run_dir="/tmp/kfx"\n' + ACC + 'loadmodule "ctl.so"', {
        "ctl": [("unix", "/tmp/kfx/kamailio_ctl", "<string>:5")],
        "places": [("socket", "/tmp/kfx/kamailio_ctl", 'loadmodule "ctl.so"', "<string>:5")]}),
    ("ctl addresses, each with its line", ACC + 'loadmodule "ctl.so"\n'
     'modparam("ctl", "binrpc", "unix:/tmp/c1")\nmodparam("ctl", "binrpc", "tcp:127.0.0.1:2046")',
     {"ctl": [("unix", "/tmp/c1", "<string>:5"), ("tcp", ("127.0.0.1", 2046), "<string>:6")]}),
    ("ingest socket", ACC + 'modparam("kamflat", "ingest_socket", "/tmp/kf.sock")', {
        "places": [("socket", "/tmp/kf.sock", 'modparam("kamflat", "ingest_socket", ...)',
                    "<string>:4")]}),
    ("ingest socket relative: under run_dir", 'rundir="/tmp/kfx"\n' + ACC +
     'modparam("kamflat", "ingest_socket", "in.sock")', {
         "ingest_socket.path": "/tmp/kfx/in.sock", "ingest_socket.where": "<string>:5"}),
    ("listen and the SIP front end", "listen=udp:127.0.0.1:5070\nlisten=udp:[::1]\n" + ACC +
     'modparam("acc", "db_extra", "u=$fU;ua=$hdr(User-Agent)")\n'
     'modparam("kamflat", "sip_reply", "INVITE=486 Busy Here")', {
         "listen": [("udp:127.0.0.1:5070", False, "127.0.0.1", 5070, "<string>:1"),
                    ("udp:[::1]", True, "::1", 5060, "<string>:2")],
         "db_extra": [("u", "$fU"), ("ua", "$hdr(User-Agent)")],
         "sip.reply_overrides": ["INVITE=486 Busy Here"], "sip.reply": "200 OK"}),
    ("db_extra without the SIP front end takes any pvar", ACC +
     'modparam("acc", "db_extra", "x=$avp(x)")', {"db_extra": [("x", "$avp(x)")], "sip": None}),
    ("flush and delimiter modes", ACC + 'modparam("db_flatstore", "flush", 0)\n'
     'modparam("db_flatstore", "encode_delimiter", 0)\n'
     'modparam("kamflat", "encode_newlines", 1)\nmodparam("kamflat", "rotate_timeout", 500)', {
         "flush": False, "encode_delimiter": False, "encode_newlines": True,
         "rotate_timeout": 0.5}),
    ("debug", "debug=3\n" + ACC, {"debug": 3, "debug_set": True}),
    ("debug negative", "debug=-1\n" + ACC, {"debug": -1}),
]


@pytest.mark.parametrize("text,checks", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_model(text, checks):
    model = resolve(parse_config(text))
    assert {key: observe(model, key) for key in checks} == checks


# (file, {model key: expected}, the notice) - configs in the style of each Kamailio
KAMAILIO_STYLE = [
    ("kamailio-3.3-style.cfg", {
        "children": 4, "debug": 2, "mi_fifo.path": "/tmp/kamailio_fifo",
        "db_dir": "/var/log/kamailio/acc", "extra_columns": ["src_user", "src_domain"],
        "listen": [("udp:127.0.0.1:5090", False, "127.0.0.1", 5090,
                    str(CFG / "kamailio-3.3-style.cfg") + ":15")],
        "jsonrpc_fifo": None, "ctl": []},
     "parsed past, not emulated: statements log_stderror, memdbg, memlog, log_facility, fork, "
     "disable_tcp, auto_aliases; blocks route; modules tm, sl"),
    ("kamailio-4.4-style.cfg", {
        "children": 2, "debug": 3, "run_dir": "/tmp/kamflat-44",
        "mi_fifo.path": "/tmp/kamflat-44/kamailio_fifo",
        "ctl": [("unix", "/tmp/kamflat-44/kamailio_ctl",
                 str(CFG / "kamailio-4.4-style.cfg") + ":34")],
        "extra_columns": ["src_user", "src_domain", "dst_ouser"]},
     "parsed past, not emulated: statements log_stderror, memdbg, memlog, log_facility, fork, "
     "tcp_connection_lifetime, dns_try_ipv6; blocks request_route; modules corex, tm, tmx, sl"),
    ("kamailio-5.6-style.cfg", {
        "children": 3, "debug": 1, "mi_fifo": None,
        "jsonrpc_fifo.path": "/tmp/kamflat-56/kamailio_rpc.fifo",
        "ctl": [("unix", "/tmp/kamflat-56/kamailio_ctl",
                 str(CFG / "kamailio-5.6-style.cfg") + ":41")],
        "ingest_socket.path": "/tmp/kamflat-56/ingest.sock",
        "sip.db_extra": "src_user=$fU;ua=$hdr(User-Agent)"},
     "parsed past, not emulated: statements log_stderror, memdbg, memlog, log_facility, "
     "log_prefix, fork, tcp_connection_lifetime, enable_sctp; blocks request_route; "
     "modules corex, tm, tmx, sl, textops"),
]


@pytest.mark.parametrize("name,checks,notice", KAMAILIO_STYLE,
                         ids=[c[0] for c in KAMAILIO_STYLE])
def test_kamailio_style_configs(name, checks, notice):
    config = load_config(str(CFG / name))
    model = resolve(config)
    assert {key: observe(model, key) for key in checks} == checks
    assert config.compat == "KAMAILIO"
    assert config.notice() == notice          # #!KAMAILIO is no "parsed past" directive


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="needs Debian's kamailio 5.6")
def test_the_56_style_config_is_one_kamailio_56_accepts():
    real = subprocess.run(["kamailio", "-c", "-f", str(CFG / "kamailio-5.6-style.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert real.returncode == 0, real.stderr


@pytest.mark.parametrize("debug,level", [(3, 10), (2, 20), (1, 25), (0, 30), (-1, 40),
                                         (-3, 50), (9, 10), (-9, 50)])
def test_log_level_follows_kamailios_debug_levels(debug, level):
    assert log_level(debug) == level


L4 = ACC + "loadmodule \"ctl.so\"\n"     # 4 lines

# (case id, config text, line, message): every start error serve gives from the config.
START_ERRORS = [
    ("no acc directory", "children=1\n", None,
     'no accounting directory: kamflat needs acc loaded with modparam("acc", "db_url", '
     '"flatstore:/DIR")'),
    ("listen=tcp", ACC + "listen=tcp:127.0.0.1:5060", 4,
     "listen=tcp:127.0.0.1:5060: only udp is supported by kamflat"),
    ("listen with a bad port", ACC + "listen=udp:127.0.0.1:99999", 4,
     "listen=udp:127.0.0.1:99999: bad port '99999' (expected 0..65535)"),
    ("listen IPv6 without brackets", ACC + "children=1\nlisten=udp:::1:5060", 5,
     "listen=udp:::1:5060: put an IPv6 address in brackets: udp:[ADDR]:PORT"),
    ("db_extra pvar the SIP front end does not have", "listen=udp:127.0.0.1:5060\n" + ACC +
     'modparam("acc", "db_extra", "a=$fU;x=$avp(x)")', 5,
     "db_extra: unsupported pseudo-variable '$avp(x)' (supported: $fU $fd $fn $fu $tU $td "
     "$tu $ru $rU $rd $ci $cs $ua $si $sp $rm $hdr(Name)) in 'x=$avp(x)'"),
    ("db_extra bad part", ACC + 'modparam("acc", "db_extra", "a")', 4,
     "db_extra: bad part 'a' (expected column=$pvar)"),
    ("sip_reply bad code", "listen=udp:127.0.0.1:5060\n" + ACC +
     'modparam("kamflat", "sip_reply", "200 OK")\nmodparam("kamflat", "sip_reply", "99 No")', 6,
     "sip_reply: '99 No' does not start with a final reply code 200..699"),
    ("sip_reply override without a method", "listen=udp:127.0.0.1:5060\n" + ACC +
     'modparam("kamflat", "sip_reply", "=486 Busy")', 5, "sip_reply: no method in ''"),
    ("acc_methods empty", "listen=udp:127.0.0.1:5060\n" + ACC +
     'modparam("kamflat", "acc_methods", "|")', 5, "acc_methods: no method in '|'"),
    ("ctl bad address", L4 + 'modparam("ctl", "binrpc", "http:x")', 5,
     "ctl address 'http:x': expected unix:PATH, unixs:PATH, unixd:PATH, tcp:HOST:PORT or "
     "udp:HOST:PORT"),
    ("ctl bad port", L4 + 'modparam("ctl", "binrpc", "tcp:127.0.0.1:x")', 5,
     "ctl address 'tcp:127.0.0.1:x': expected tcp:HOST:PORT"),
    ("ingest socket too long", ACC + 'modparam("kamflat", "ingest_socket", "/tmp/%s")'
     % ("x" * 110), 4, 'modparam("kamflat", "ingest_socket", ...): the unix socket path '
     '/tmp/%s is 115 bytes, longer than the 107 a unix socket path may have' % ("x" * 110)),
    ("run_dir unquoted", "run_dir=/tmp/x\n" + ACC, 1,
     'run_dir needs a quoted "string", got /tmp/x'),
    ("debug not a number", "debug=loud\n" + ACC, 1,
     "debug needs a number (Kamailio's log level, -5..3), got loud"),
    ("a parse error", ACC + 'modparam("db_flatstore", "flush", "0")', 4,
     'modparam("db_flatstore", "flush", "0"): flush takes an integer, got a string; write '
     'the number without quotes'),
]


@pytest.mark.parametrize("text,line,message", [c[1:] for c in START_ERRORS],
                         ids=[c[0] for c in START_ERRORS])
def test_check_and_serve_refuse_the_same_with_file_and_line(tmp_path, text, line, message):
    cfg = tmp_path / "k.cfg"
    cfg.write_text(text)
    where = "%s:%d" % (cfg, line) if line else str(cfg)
    with pytest.raises(ConfigError) as error:
        resolve(load_config(str(cfg)))
    assert str(error.value) == "%s: %s" % (where, message)
    check = run_kamflat("check", "-f", cfg)
    assert (check.returncode, check.stdout, check.stderr) == (1, "", "%s: %s\n" % (where, message))
    serve = run_kamflat("serve", "-f", cfg)
    assert (serve.returncode, serve.stderr) == (1, "kamflat: %s: %s\n" % (where, message))


def test_check_opens_and_makes_nothing(tmp_path):
    """The whole model is built, nothing is bound or created: a live server's paths,
    missing directories and a port in use are serve's business at start."""
    where = tmp_path / "not" / "yet"
    cfg = tmp_path / "k.cfg"
    cfg.write_text(ACC.replace("/tmp/kf-model/acc", str(where / "acc")) +
                   'loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "%s/fifo")\n'
                   'modparam("kamflat", "ingest_socket", "%s/in.sock")\nlisten=udp:127.0.0.1:9\n'
                   % (where, where))
    check = run_kamflat("check", "-f", cfg)
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout == ("children=8 db_dir=%s/acc mi_fifo=%s/fifo jsonrpc_fifo=- ctl=- "
                            "ingest_socket=%s/in.sock flush=1\n" % (where, where, where))
    assert not (tmp_path / "not").exists()
