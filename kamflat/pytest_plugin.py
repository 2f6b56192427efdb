"""pytest plugin: a real `kamflat serve` per test, to assert on acc records in a few lines.

    def test_call_is_accounted(kamflat_server):
        kamflat_server.send([{"table": "acc", "values": ["INVITE", "ft", "tt", "c1", "200", "OK", 1795763336]}])
        assert kamflat_server.records("acc")[0]["callid"] == "c1"

Installed with kamflat, the plugin is active through its `pytest11` entry point; from a
checkout, load it with `-p kamflat.pytest_plugin` or `pytest_plugins = ["kamflat.pytest_plugin"]`.
Options (children, db_extra, flush, extra config lines) come from the fixture
`kamflat_server_options`, which a conftest.py may override.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import pytest
except ImportError:      # KamflatServer works without pytest (the benchmarks use it)
    pytest = None

import kamflat
from kamflat.config.cfg import ConfigError, parse_config
from kamflat.config.model import resolve
from kamflat.flatstore import reader

MAX_SOCKET_PATH = 100     # sun_path holds 107 bytes on Linux

DEFAULT_OPTIONS = {
    "children": 2,
    "db_extra": "",          # acc db_extra, e.g. "src_user=$fU;src_domain=$fd"
    "flush": 1,
    "encode_delimiter": 1,
    "extra_cfg": "",         # more config lines, appended as they are
}

CONFIG_TEMPLATE = """\
#!KAMAILIO
# written by kamflat's pytest plugin for one test; everything lives in this directory
children={children}
loadmodule "kex.so"
loadmodule "mi_fifo.so"
loadmodule "db_flatstore.so"
loadmodule "acc.so"
modparam("mi_fifo", "fifo_name", "{mi_fifo}")
modparam("db_flatstore", "flush", {flush})
modparam("db_flatstore", "encode_delimiter", {encode_delimiter})
modparam("acc", "db_url", "flatstore:{acc_dir}")
{db_extra_line}modparam("kamflat", "ingest_socket", "{ingest_socket}")
{extra_cfg}
"""


def kamflat_command(*args):
    return [sys.executable, "-m", "kamflat", *args]


def child_env():
    """The environment for `kamflat` subprocesses: they must import this same kamflat,
    whether it is installed or used from a checkout."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(kamflat.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


class KamflatServer:
    """One `kamflat serve` in `directory`: config, acc files, MI FIFO and ingest socket there."""

    def __init__(self, directory, **options):
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise TypeError("unknown kamflat_server option(s): %s" % ", ".join(sorted(unknown)))
        self.options = dict(DEFAULT_OPTIONS, **options)
        self.directory = str(directory)
        self.acc_dir = os.path.join(self.directory, "acc")
        self.mi_fifo = os.path.join(self.directory, "kamflat_fifo")
        self.ingest_socket = os.path.join(self.directory, "ingest.sock")
        self._socket_dir = None
        if len(self.ingest_socket) > MAX_SOCKET_PATH:   # deep tmp dirs (pytester): go short
            self._socket_dir = tempfile.mkdtemp(prefix="kamflat-")
            self.ingest_socket = os.path.join(self._socket_dir, "ingest.sock")
        self.cfg_path = os.path.join(self.directory, "kamflat.cfg")
        self.log_path = os.path.join(self.directory, "kamflat.log")
        # Paths and columns as `kamflat serve` will resolve them (extra_cfg may move them).
        # A config serve refuses keeps the paths chosen here: start() then fails with
        # serve's own error line.
        self.extra_columns = []
        try:
            model = resolve(parse_config(self.config_text(), self.cfg_path,
                                         environ=os.environ))
        except ConfigError:
            model = None
        # What start() waits for: every FIFO and socket the config names is served.
        self._places = [self.ingest_socket, self.mi_fifo]
        if model is not None:
            self._places = [place.path for place in model.places()]
            self.mi_fifo = model.mi_fifo.path
            self.ingest_socket = model.ingest_socket.path
            self.acc_dir = model.db_dir
            self.extra_columns = model.extra_columns
        self.rotations = 0
        self.process = None

    # -- lifecycle -------------------------------------------------------------------------

    def config_text(self):
        db_extra = self.options["db_extra"]
        return CONFIG_TEMPLATE.format(
            mi_fifo=self.mi_fifo, acc_dir=self.acc_dir, ingest_socket=self.ingest_socket,
            db_extra_line='modparam("acc", "db_extra", "%s")\n' % db_extra if db_extra else "",
            **{k: v for k, v in self.options.items() if k != "db_extra"})

    def write_config(self):
        with open(self.cfg_path, "w") as f:
            f.write(self.config_text())

    def start(self, timeout=15.0):
        """Start the server; return once it serves every FIFO and socket of its config."""
        self.write_config()
        os.makedirs(self.acc_dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                kamflat_command("serve", "-f", self.cfg_path), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, cwd=self.directory, env=child_env(),
                start_new_session=True)
        self.wait_for(self._ready, timeout, message="kamflat serve to serve %s"
                      % ", ".join(self._places))

    def _ready(self):
        """Every FIFO has a reader and every socket accepts (the ingest socket accepts a
        little before the management process has opened its FIFOs and ctl sockets)."""
        from kamflat.server.paths import live_holder
        if self.process.poll() is not None:
            raise RuntimeError("kamflat serve exited with status %s before it was ready:\n%s"
                               % (self.process.returncode, self.log()))
        return all(live_holder(path) for path in self._places)

    def stop(self, timeout=10.0):
        """SIGTERM (a clean stop: everything accepted is on disk), SIGKILL if that hangs.

        Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)   # its own session: only its children
                self.process.wait()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        return self.process.returncode

    # -- what a test does ------------------------------------------------------------------

    def send(self, records, check=True):
        """Send records ({"table": ..., "values": [...]} dicts, (table, values) pairs or JSON
        lines) to the ingest socket; returns once all are written (kamflat.client.Result).
        With check=True a refused line fails the test."""
        from kamflat.client import send
        items = [{"table": r[0], "values": list(r[1])} if isinstance(r, tuple) else r
                 for r in records]
        result = send(self.ingest_socket, items)
        if check and not result.ok:
            raise AssertionError("kamflat refused records: %s%s"
                                 % (result.errors, " (server stopped)" if result.stopped else ""))
        return result

    def rotate(self, rename=True):
        """Rotate as an operator does: rename every live acc file (to NAME.<n>), then
        `kamflat fifo flat_rotate`. kamflat answers once every writer closed its files, so
        the renamed files are complete when this returns. Returns the new names."""
        self.rotations += 1
        renamed = []
        if rename:
            for name in sorted(os.listdir(self.acc_dir)):
                if name.endswith(".log"):
                    new = "%s.%d" % (name, self.rotations)
                    os.rename(os.path.join(self.acc_dir, name), os.path.join(self.acc_dir, new))
                    renamed.append(new)
        result = subprocess.run(kamflat_command("fifo", "--fifo", self.mi_fifo, "flat_rotate"),
                                capture_output=True, text=True, timeout=30, env=child_env())
        if result.returncode != 0:
            raise AssertionError("flat_rotate failed (exit %d): %s%s"
                                 % (result.returncode, result.stdout, result.stderr))
        return renamed

    def columns(self, table):
        """Column names of `table`'s records: acc's + db_extra for acc's tables, else None."""
        return reader.acc_columns(self.extra_columns) if table in reader.ACC_TABLES else None

    def records(self, table="acc", rotated=True, decode=True, keys=None):
        """`table`'s records from every file (rotated ones too unless rotated=False), merged by
        time: dicts by column name when the columns are known (see columns()), else lists.
        decode=True turns %7C back into | (what was sent; ambiguous only for a literal %7C)."""
        keys = keys or self.columns(table)
        time_index = keys.index("time") if keys and "time" in keys else None
        out = []
        for record in reader.read_table(self.acc_dir, table, rotated, time_index):
            values = reader.parse_record(record.raw, decode=decode)
            out.append(reader.name_values(values, keys) if keys else values)
        return out

    def files(self, table="acc"):
        """Names of `table`'s files in the acc directory, live and rotated."""
        return [f.name for f in reader.select_table_files(os.listdir(self.acc_dir), table, True)]

    def wait_for(self, predicate, timeout=10.0, interval=0.02, message=None):
        """Call predicate() until it returns something truthy and return that; fail the test
        (AssertionError with the server log) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.1f s waiting for %s\n--- kamflat log ---\n%s"
                                     % (timeout, message or getattr(predicate, "__name__", "it"),
                                        self.log()[-4000:]))
            time.sleep(interval)

    def log(self):
        """What the server logged so far (its stderr)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


if pytest is not None:
    @pytest.fixture
    def kamflat_server_options():
        """Override in a conftest.py to change the server, e.g.
        `return {"children": 4, "db_extra": "src_user=$fU;src_domain=$fd"}`."""
        return {}

    @pytest.fixture
    def kamflat_server(tmp_path_factory, kamflat_server_options):
        """A running `kamflat serve` in a temporary directory, stopped and reaped after the test."""
        # a short directory: unix socket paths are limited to 107 bytes
        server = KamflatServer(tmp_path_factory.mktemp("kamflat"), **kamflat_server_options)
        try:
            server.start()
            yield server
        finally:
            status = server.stop()
        if status not in (0, None):
            raise AssertionError("kamflat serve exited with status %s:\n%s" % (status, server.log()))
