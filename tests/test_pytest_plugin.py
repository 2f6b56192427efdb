"""The pytest plugin: sample test modules that use `kamflat_server` as a user would, run by
pytester in a child pytest against a real `kamflat serve`."""
import importlib.metadata
import importlib.util
import json
import os

import pytest

from conftest import REPO

pytest_plugins = ["pytester"]

if importlib.util.find_spec("kamflat.server.arbiter") is None:
    pytest.skip("kamflat serve not available", allow_module_level=True)

PLUGIN = "kamflat.pytest_plugin"
# The entry point lines given to setup.cfg ([options.entry_points] pytest11 = ...).
ENTRY_POINT = "%s = %s" % (PLUGIN, PLUGIN)


@pytest.fixture(autouse=True)
def child_imports_this_kamflat(monkeypatch):
    """The child pytest imports kamflat from this checkout when it is not installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


def plugin_installed():
    return any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))


def run_child_pytest(pytester, *args):
    """The child pytest loads the plugin as an installed kamflat would (entry point), or
    with -p when kamflat runs from a checkout."""
    load = [] if plugin_installed() else ["-p", PLUGIN]
    return pytester.runpytest_subprocess(*load, *args, timeout=120)


SAMPLE_MODULE = '''
import json, os

def invite(callid, when=1795763336):
    return {"table": "acc", "values": ["INVITE", "ft-" + callid, "tt-" + callid, callid, "200", "OK", when]}

def test_send_and_read_back(kamflat_server):
    result = kamflat_server.send([invite("c1"), invite("pipe|2", 1795763337),
                                  ("missed_calls", ["INVITE", "ft", "", "c3", "486", "Busy Here", 1795763338])])
    assert result.written == 3
    acc = kamflat_server.records("acc")
    assert [r["callid"] for r in acc] == ["c1", "pipe|2"]
    assert acc[0] == {"method": "INVITE", "from_tag": "ft-c1", "to_tag": "tt-c1", "callid": "c1",
                      "sip_code": "200", "sip_reason": "OK", "time": "1795763336"}
    assert kamflat_server.records("missed_calls")[0]["sip_reason"] == "Busy Here"

def test_rotate_keeps_every_record_once(kamflat_server):
    kamflat_server.send([invite("before-%d" % i) for i in range(20)])
    renamed = kamflat_server.rotate()
    assert renamed and all(name.endswith(".1") for name in renamed)
    kamflat_server.send([invite("after-%d" % i, 1795763340) for i in range(20)])
    live = [f for f in kamflat_server.files("acc") if f.endswith(".log")]
    assert live, "records after the rotation went into new files"
    callids = [r["callid"] for r in kamflat_server.records("acc")]
    assert sorted(callids) == sorted(["before-%d" % i for i in range(20)] + ["after-%d" % i for i in range(20)])
    assert len(kamflat_server.records("acc", rotated=False)) == 20

def test_wait_for_returns_the_value(kamflat_server):
    kamflat_server.send([invite("w1")])
    found = kamflat_server.wait_for(lambda: [r for r in kamflat_server.records() if r["callid"] == "w1"])
    assert found[0]["method"] == "INVITE"
    with open(os.environ["KAMFLAT_SAMPLE_OUT"], "w") as f:
        json.dump({"pid": kamflat_server.process.pid, "socket": kamflat_server.ingest_socket,
                   "fifo": kamflat_server.mi_fifo}, f)

def test_wait_for_times_out_with_the_server_log(kamflat_server):
    kamflat_server.wait_for(lambda: kamflat_server.records("acc"), timeout=0.3, message="a record")
'''


def test_sample_module_uses_the_fixture_as_a_user_would(pytester, tmp_path, monkeypatch):
    out = tmp_path / "server.json"
    monkeypatch.setenv("KAMFLAT_SAMPLE_OUT", str(out))
    pytester.makepyfile(test_sample=SAMPLE_MODULE)
    result = run_child_pytest(pytester, "-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*timed out after 0.3 s waiting for a record*",
                                 "*--- kamflat log ---*", "*kamflat ready*"])
    # teardown stopped and reaped the server, which removed its socket and FIFO
    server = json.loads(out.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(server["pid"], 0)
    assert not os.path.exists(server["socket"]) and not os.path.exists(server["fifo"])


def test_options_from_conftest_set_children_and_db_extra(pytester):
    pytester.makeconftest('''
import pytest

@pytest.fixture
def kamflat_server_options():
    return {"children": 3, "db_extra": "src_user=$fU;src_domain=$fd"}
''')
    pytester.makepyfile(test_options='''
def test_extra_columns(kamflat_server):
    assert "children=3" in open(kamflat_server.cfg_path).read()
    kamflat_server.send([("acc", ["BYE", "f", "t", "c%d" % i, "200", "OK", 1795763336 + i, "alice", "example.com"])
                         for i in range(30)])
    records = kamflat_server.records("acc")
    assert len(records) == 30
    assert records[0]["src_user"] == "alice" and records[-1]["src_domain"] == "example.com"
    assert set(kamflat_server.files("acc")) <= {"acc_129.log", "acc_130.log", "acc_131.log"}
''')
    run_child_pytest(pytester, "-q").assert_outcomes(passed=1)


def test_unknown_option_is_a_clear_setup_error(pytester):
    pytester.makeconftest('''
import pytest

@pytest.fixture
def kamflat_server_options():
    return {"childs": 3}
''')
    pytester.makepyfile(test_bad='def test_it(kamflat_server):\n    pass\n')
    result = run_child_pytest(pytester, "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown kamflat_server option(s): childs*"])


def test_entry_point_loads_the_plugin_with_or_without_p(pytester, monkeypatch):
    """The exact pytest11 line for setup.cfg: found through package metadata, and still fine
    when a user also passes -p kamflat.pytest_plugin."""
    if plugin_installed():
        pytest.skip("kamflat is installed: its real entry point is in use in every test here")
    dist = pytester.path / "site" / "kamflat_ep-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kamflat-ep\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\n%s\n" % ENTRY_POINT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(dist.parent), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_ep='''
def test_fixture_is_there(kamflat_server):
    assert kamflat_server.send([("acc", ["INVITE", "f", "t", "c", "200", "OK", 1])]).written == 1
''')
    pytester.runpytest_subprocess("-q", timeout=120).assert_outcomes(passed=1)
    pytester.runpytest_subprocess("-q", "-p", PLUGIN, timeout=120).assert_outcomes(passed=1)
