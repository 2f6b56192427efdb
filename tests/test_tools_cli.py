"""`kamflat cat` and `kamflat follow` end to end, as subprocesses on real files."""
import gzip
import json
import os
import shutil
import socket
import subprocess

import pytest

from conftest import free_udp_port, DATA, REPO, kamflat_argv, kamflat_env, run_kamflat, wait_until

KAMAILIO_FILES = DATA / "reader"   # acc files Kamailio 5.6.3 wrote (db_extra: 3 columns)


@pytest.fixture
def acc_dir(tmp_path):
    directory = tmp_path / "acc"
    shutil.copytree(KAMAILIO_FILES, directory)
    return directory


def kamailio_lines():
    return [line for p in sorted(KAMAILIO_FILES.glob("acc_*.log"))
            for line in p.read_bytes().splitlines()]


def test_cat_prints_every_record_as_on_disk_merged_by_time(acc_dir):
    result = subprocess.run(kamflat_argv("cat", "--dir", acc_dir, "acc"), env=kamflat_env(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted(kamailio_lines())
    times = [int(line.split(b"|")[6]) for line in lines]
    assert times == sorted(times)


def test_cat_json_names_columns_and_decodes_when_asked(acc_dir):
    keys = "method,from_tag,to_tag,callid,sip_code,sip_reason,time,src_user,src_domain,dst_ouser"
    result = run_kamflat("cat", "--dir", acc_dir, "--json", "--keys", keys, "--decode", "acc")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(objects) == len(kamailio_lines())
    by_callid = {o["record"]["callid"]: o for o in objects}
    assert by_callid["call|pipe|3"]["record"]["dst_ouser"] == "to|user"
    assert by_callid["call-ü-用户-4"]["record"]["dst_ouser"] == "用户"
    bye = by_callid["call-basic-1@127.0.0.1"]
    assert bye["table"] == "acc" and bye["file"].startswith("acc_")
    raw = run_kamflat("cat", "--dir", acc_dir, "--json", "acc")
    assert "call%7Cpipe%7C3" in raw.stdout   # not decoded unless asked
    other = run_kamflat("cat", "--dir", acc_dir, "--json", "acc_other")
    assert other.returncode == 0 and other.stdout == ""


def test_cat_rotated_reads_plain_and_gzip_rotations(tmp_path):
    (tmp_path / "missed_calls_129.log").write_bytes(b"INVITE|a||c3|486|Busy Here|30\n")
    (tmp_path / "missed_calls_129.log.1").write_bytes(b"INVITE|a||c2|487|Request Terminated|20\n")
    with gzip.open(tmp_path / "missed_calls_130.log-20261126.gz", "wb") as f:
        f.write(b"INVITE|a||c1|408|Request Timeout|10\n")
    plain = run_kamflat("cat", "--dir", tmp_path, "missed_calls")
    assert plain.stdout.splitlines() == ["INVITE|a||c3|486|Busy Here|30"]
    rotated = run_kamflat("cat", "--dir", tmp_path, "--rotated", "--json", "missed_calls")
    records = [json.loads(line)["record"] for line in rotated.stdout.splitlines()]
    assert [(r["callid"], r["sip_code"]) for r in records] == [("c1", "408"), ("c2", "487"), ("c3", "486")]


def record_lines(first, count):
    return [b"INVITE|ft|tt|c%d|200|OK|%d" % (n, 1000 + n) for n in range(first, first + count)]


def test_cat_rotated_damaged_compressed_files_are_named_and_the_rest_printed(tmp_path):
    """A truncated .gz (a compression cut short: disk full, a killed logrotate), a file
    named .gz that is not gzip, a truncated .bz2 and a corrupt .xz: each is named on
    stderr with what is wrong; every record of the other files and every whole record
    before the damage is printed, once, nothing torn; the status is 2. (Before, a
    truncated .gz ended cat with a traceback, a bad one with a line naming no file.)"""
    import bz2
    import zlib
    good = record_lines(0, 20000)           # big enough for several reads of each file
    (tmp_path / "acc_129.log").write_bytes(b"\n".join(good) + b"\n")
    cut = record_lines(20000, 20000)
    whole = gzip.compress(b"\n".join(cut) + b"\n")
    truncated = whole[:len(whole) // 2]
    (tmp_path / "acc_130.log.1.gz").write_bytes(truncated)
    (tmp_path / "acc_131.log.1.gz").write_bytes(b"INVITE|not|gzip|1\n")
    (tmp_path / "acc_132.log.1.bz2").write_bytes(
        bz2.compress(b"\n".join(record_lines(40000, 100)) + b"\n")[:-40])
    (tmp_path / "acc_133.log.1.xz").write_bytes(b"\xfd7zXZ\x00 garbage")
    result = subprocess.run(kamflat_argv("cat", "--dir", tmp_path, "--rotated", "acc"),
                            env=kamflat_env(), capture_output=True, timeout=60)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    for name in ("acc_130.log.1.gz", "acc_131.log.1.gz", "acc_132.log.1.bz2", "acc_133.log.1.xz"):
        assert "%s: cannot decompress it" % (tmp_path / name) in stderr, stderr
    assert "4 files left out or read only in part (above)" in stderr
    # what zlib can make of the truncated file, but for the incomplete record at its end
    readable = zlib.decompressobj(31).decompress(truncated)
    expected = good + readable[:readable.rindex(b"\n")].split(b"\n")
    assert len(expected) > 25000
    assert sorted(result.stdout.splitlines()) == sorted(expected)


@pytest.mark.parametrize("args,message", [
    (["--dir", "/nonexistent/acc", "acc"], "flatstore directory /nonexistent/acc does not exist"),
    (["--dir", "/tmp", "../etc/acc"], "'../etc/acc' is not a table name"),
])
def test_cat_errors_are_one_clear_line(args, message):
    result = run_kamflat("cat", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cat_into_a_closed_pipe_is_quiet(acc_dir):
    proc = subprocess.Popen(kamflat_argv("cat", "--dir", acc_dir, "acc"), env=kamflat_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b""


def test_cat_leaves_out_a_table_name_that_is_no_regular_file(tmp_path):
    """A FIFO named like a table file (a test bed capturing a writer's output, say) made
    cat wait forever in open(), for a writer; a directory ended it there. Now each is named
    on stderr and left out, the other files are printed, and the status is 2."""
    (tmp_path / "acc_129.log").write_bytes(b"\n".join(record_lines(0, 3)) + b"\n")
    os.mkfifo(tmp_path / "acc_130.log")
    (tmp_path / "acc_131.log").mkdir()
    result = subprocess.run(kamflat_argv("cat", "--dir", tmp_path, "--json", "acc"),
                            env=kamflat_env(), capture_output=True, timeout=30)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "%s: not a regular file (a FIFO): left out" % (tmp_path / "acc_130.log") in stderr
    assert "%s: not a regular file (a directory): left out" % (tmp_path / "acc_131.log") \
        in stderr
    assert "2 files left out or read only in part (above)" in stderr
    assert [json.loads(line)["values"][3] for line in result.stdout.splitlines()] == \
        ["c0", "c1", "c2"]


def test_cat_rotated_into_a_pipe_closed_mid_gzip_is_quiet(tmp_path):
    """`kamflat cat --rotated acc | head -1` over big .gz files: the reader goes while the
    decompression thread reads ahead; cat still exits 0, at once, saying nothing."""
    for number in (129, 130):
        (tmp_path / ("acc_%d.log.1.gz" % number)).write_bytes(
            gzip.compress(b"\n".join(record_lines(0, 200000)) + b"\n", compresslevel=1))
    proc = subprocess.Popen(kamflat_argv("cat", "--dir", tmp_path, "--rotated", "acc"),
                            env=kamflat_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"INVITE|ft|tt|c0|")
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b""


class FollowProcess:
    """`kamflat follow ...` running, its stdout lines collected as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(kamflat_argv("follow", *args), env=kamflat_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buffer = b""

    def lines(self):
        """Every whole line it printed so far (reads what is in the pipe now)."""
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer.splitlines()

    def wait_lines(self, n, what):
        return wait_until(lambda: len(self.lines()) >= n and self.lines(), what=what)

    def finish(self):
        """Wait for it to stop by itself (--count/--timeout): (exit status, stderr).
        Its output is read meanwhile, so a full pipe never holds it up."""
        wait_until(lambda: self.lines() is not None and self.proc.poll() is not None,
                   timeout=30, what="kamflat follow to stop")
        self.lines()
        return self.proc.returncode, self.proc.stderr.read().decode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.parametrize("mode_args", [["--poll"], []], ids=["poll", "auto"])
def test_follow_across_a_rename_and_a_new_file(tmp_path, mode_args):
    live = tmp_path / "acc_129.log"
    append(live, b"INVITE|f1|t1|c1|200|OK|1\n")
    with FollowProcess("--dir", tmp_path, "--count", "5", "--timeout", "20", *mode_args,
                       "acc") as follower:
        follower.wait_lines(1, "the existing record")
        append(live, b"BYE|f1|t1|c1|200|OK|2\nINVITE|f2|")          # a record half written
        os.rename(live, tmp_path / "acc_129.log.1")                   # mv ...
        append(tmp_path / "acc_129.log.1", b"t2|c2|200|OK|3\n")      # writer not reopened yet
        append(live, b"INVITE|f3|t3|c3|200|OK|4\n")                   # reopened by name
        append(tmp_path / "acc_130.log", b"INVITE|f4|t4|c4|200|OK|5\n")  # a new process
        code, err = follower.finish()
    assert code == 0, err
    got = follower.lines()
    assert sorted(got) == sorted([b"INVITE|f1|t1|c1|200|OK|1", b"BYE|f1|t1|c1|200|OK|2",
                                  b"INVITE|f2|t2|c2|200|OK|3", b"INVITE|f3|t3|c3|200|OK|4",
                                  b"INVITE|f4|t4|c4|200|OK|5"])


def test_follow_leaves_out_a_fifo_named_like_a_table_file(tmp_path):
    """follow waited forever in open() on such a FIFO, for a writer, and printed nothing
    more; now it says so once, and goes on with the other files."""
    os.mkfifo(tmp_path / "acc_130.log")
    append(tmp_path / "acc_129.log", b"INVITE|f1|t1|c1|200|OK|1\n")
    with FollowProcess("--dir", tmp_path, "--count", "2", "--timeout", "20", "--poll",
                       "acc") as follower:
        follower.wait_lines(1, "the existing record")
        append(tmp_path / "acc_129.log", b"BYE|f1|t1|c1|200|OK|2\n")
        code, err = follower.finish()
    assert code == 0, err
    assert follower.lines() == [b"INVITE|f1|t1|c1|200|OK|1", b"BYE|f1|t1|c1|200|OK|2"]
    assert err.count("acc_130.log is not a regular file: left out") == 1


def test_follow_new_json_only_what_comes_and_timeout_stops_it(tmp_path):
    append(tmp_path / "acc_129.log", b"INVITE|old|||200|OK|1\n")
    with FollowProcess("--dir", tmp_path, "--new", "--json", "--poll", "--timeout", "1.5",
                       "acc") as follower:
        # keep appending until the follower (started at the end) has seen one of them
        n = 0

        def seen():
            nonlocal n
            n += 1
            append(tmp_path / "acc_129.log", b"INVITE|new%d||c%%7Cx|200|OK|2\n" % n)
            return follower.lines()
        wait_until(seen, what="a new record")
        code, err = follower.finish()
    assert code == 0, err
    records = [json.loads(line) for line in follower.lines()]
    assert records and all(r["record"]["from_tag"].startswith("new") for r in records)
    assert records[0]["record"]["callid"] == "c%7Cx"


# ---- on a running server: kamflat gen -> kamflat serve -> kamflat follow / cat -------------

DB_EXTRA = "src_user=$fU;src_domain=$fd;dst_ouser=$tU"


@pytest.fixture
def server(tmp_path):
    pytest.importorskip("kamflat.server.arbiter", reason="kamflat serve not available")
    from kamflat.pytest_plugin import KamflatServer
    running = KamflatServer(tmp_path / "srv", db_extra=DB_EXTRA)
    os.makedirs(running.directory)
    try:
        running.start()
        yield running
    finally:
        assert running.stop() == 0, running.log()


def expected_acc_lines(*gen_args):
    """What `kamflat gen ARGS` puts in acc files: generated locally with the same seed."""
    out = run_kamflat("gen", "--output", "-", *gen_args)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    return sorted("|".join(str(v).replace("|", "%7C") for v in r["values"])
                  for r in records if r["table"] == "acc")


def test_follow_and_cat_with_config_across_ten_rotations_under_load(server):
    """Ten batches from `kamflat gen`, each rotated away while it may still be streaming in.
    Every rotation waits for its batch's first record in a live file, never for a rate or a
    time, so a slow machine changes how much overlaps, not the outcome."""
    batches = [["--count", "300", "--seed", str(21 + i), "--start", str(1795737600 + 86400 * i),
                "--extra", "--edge-cases"] for i in range(10)]    # each batch a day later
    expected = sorted(line for args in batches for line in expected_acc_lines(*args))
    with FollowProcess("-f", server.cfg_path, "--count", len(expected), "--timeout", "120",
                       "acc") as follower:
        for n, gen_args in enumerate(batches):
            sender = subprocess.Popen(kamflat_argv("gen", "-f", server.cfg_path, *gen_args),
                                      env=kamflat_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            try:
                # the last rotation renamed every live file: one now is this batch's
                wait_until(lambda: any(f.endswith(".log") for f in server.files("acc")),
                           what="records of the batch in a live file")
                if n == 0:      # files rotated before follow started are history it skips
                    follower.wait_lines(1, "kamflat follow to print the first record")
                server.rotate()
                _, err = sender.communicate(timeout=60)
            finally:
                if sender.poll() is None:
                    sender.kill()
                    sender.wait()
            assert sender.returncode == 0, err
            assert "0 errors" in err
        code, err = follower.finish()
    assert code == 0, err
    assert sorted(line.decode() for line in follower.lines()) == expected
    assert len([f for f in server.files("acc") if not f.endswith(".log")]) >= 10
    # cat -f: the same records, named by the config's db_extra, rotated files included
    cat = run_kamflat("cat", "-f", server.cfg_path, "--rotated", "--json", "acc")
    assert cat.returncode == 0, cat.stderr
    objects = [json.loads(line) for line in cat.stdout.splitlines()]
    assert sorted("|".join(o["values"]) for o in objects) == expected
    assert set(objects[0]["record"]) == {"method", "from_tag", "to_tag", "callid", "sip_code",
                                         "sip_reason", "time", "src_user", "src_domain", "dst_ouser"}
    times = [int(o["record"]["time"]) for o in objects]
    assert times == sorted(times)


def test_systemd_unit_runs_serve_in_the_foreground_and_verifies_clean():
    unit = REPO / "conf" / "kamflat.service"
    lines = unit.read_text().splitlines()
    assert "Type=simple" in lines and "KillSignal=SIGTERM" in lines
    assert "ExecStart=/usr/bin/env kamflat serve -f /etc/kamflat/kamflat.cfg" in lines
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # verify exits 0 even on bad settings, but names each one on stderr
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


SIP_INVITE = ("INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{n};rport\r\n"
              "From: <sip:alice@example.com>;tag=ft-{n}\r\nTo: <sip:bob@example.com>\r\n"
              "Call-ID: sip-{n}\r\nCSeq: 1 INVITE\r\n{ua}Content-Length: 0\r\n\r\n")


def test_follow_keeps_a_folded_header_record_whole_from_real_sip(tmp_path):
    """A SIP request with a folded User-Agent makes a record with a raw CR LF SP inside
    (as Kamailio writes it); follow and cat hand it out as one record."""
    pytest.importorskip("kamflat.server.arbiter", reason="kamflat serve not available")
    from kamflat.pytest_plugin import KamflatServer
    port = free_udp_port()
    server = KamflatServer(tmp_path / "srv", db_extra="src_user=$fU;ua=$ua",
                           extra_cfg="listen=udp:127.0.0.1:%d" % port)
    os.makedirs(server.directory)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(10)
    try:
        server.start()
        with FollowProcess("-f", server.cfg_path, "--json", "--count", "2", "--timeout", "20",
                           "acc") as follower:
            for n, ua in enumerate(["User-Agent: foo\r\n bar|baz\r\n", ""]):
                request = SIP_INVITE.format(port=client.getsockname()[1], n=n, ua=ua)
                client.sendto(request.encode(), ("127.0.0.1", port))
                assert client.recv(65536).startswith(b"SIP/2.0 200 OK")
            code, err = follower.finish()
        assert code == 0, err
        followed = [json.loads(line)["record"] for line in follower.lines()]
        cat = run_kamflat("cat", "-f", server.cfg_path, "--json", "acc")
        catted = [json.loads(line)["record"] for line in cat.stdout.splitlines()]
    finally:
        client.close()
        assert server.stop() == 0, server.log()
    assert sorted(followed, key=lambda r: r["callid"]) == sorted(catted, key=lambda r: r["callid"])
    by_callid = {r["callid"]: r for r in followed}
    assert by_callid["sip-0"]["ua"] == "foo\r\n bar%7Cbaz" and by_callid["sip-0"]["src_user"] == "alice"
    assert by_callid["sip-1"]["ua"] == ""
