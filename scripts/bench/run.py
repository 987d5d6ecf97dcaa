#!/usr/bin/env python3
"""The loader's benchmark scenarios P1-P10 (BENCHMARKS.md), each with its
baseline measured in the same run, printed as one table with the load average
beside each figure.

`--s3 s3s` (default) runs the table against the dev stack's embedded S3 server
(s3s-fs); `--s3 moto` against moto (PyPI), a second, independent S3 server that
keeps objects in memory and reads a whole object for each ranged GET. P10 always
runs against moto: it is the case of an S3 whose ranges cost a whole read.

Run through scripts/bench.sh, which installs the tools, builds, and starts a
private Docker daemon. Everything listens on 127.0.0.1, every loop is bounded,
and every process started here is stopped on the way out.

Memory is VmHWM of a loader process started afresh for its scenario (one
`azaion-loader serve` against the peers of one `azaion-loader dev` stack), so
the peak belongs to that scenario alone. Throughputs are the best of --reps
runs, for the figure and for its baseline alike; MB = 10^6 bytes.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import docker_archive  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
EMAIL = "demo@azaion.local"
PASSWORD = "demo-password"
FOLDER = "models"
# PROTOCOL §1.4 with the dev stack's fragment (src/startup/dev.rs: DEMO_FRAGMENT).
DEV_FRAGMENT = b"dev-key-fragment"
S3_READER = "dev-reader:dev-reader-secret"
S3_WRITER = "dev-writer:dev-writer-secret"
BIG_NAME = "bench-1g.bin"
MID_NAME = "bench-64m.bin"
IMAGE_REF = "azaion-bench/unlock:1"


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A scenario could not be measured; its rows say why."""


# --- processes ---------------------------------------------------------------

STARTED = []
WORK = "."


def spawn(cmd, log_path, env=None, stdin=subprocess.DEVNULL):
    """Starts `cmd` with stdout+stderr copied into `log_path` by a thread of
    this process, so the child itself never writes to the disk (the unlock
    scenario counts the loader's own disk writes)."""
    proc = subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    STARTED.append(proc)
    note_pids()
    sink = open(log_path, "ab")

    def copy():
        with sink:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                sink.write(chunk)
                sink.flush()

    threading.Thread(target=copy, daemon=True).start()
    return proc


def note_pids():
    """Keeps WORK/pids = the processes running now, for scripts/bench.sh to
    stop should this runner die before it stops them itself."""
    with open(os.path.join(WORK, "pids"), "w") as pids:
        pids.write("".join(f"{p.pid}\n" for p in STARTED))


def stop(proc, grace=10.0):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in STARTED:
        STARTED.remove(proc)
        note_pids()


def stop_all():
    for proc in list(STARTED):
        try:
            stop(proc, grace=5.0)
        except Exception as e:  # keep stopping the others
            log(f"could not stop pid {proc.pid}: {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise Failure(f"no {field} in /proc/{pid}/status")


def proc_write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise Failure(f"no write_bytes in /proc/{pid}/io")


def run(cmd, timeout=600, **kw):
    return subprocess.run(cmd, check=True, timeout=timeout, **kw)


def http_call(port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        if body is not None:
            body = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def health_once(port):
    """One raw GET /health; True on a 200. Raw sockets keep the probe cheap."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# --- curl ----------------------------------------------------------------------

CURL_WRITE_OUT = "%{http_code} %{size_download} %{size_upload} %{time_total}"


def curl(args, timeout=600):
    """Runs curl; returns (http_code, bytes_down, bytes_up, seconds)."""
    done = subprocess.run(
        ["curl", "-sS", "-w", CURL_WRITE_OUT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    fields = done.stdout.decode().split()[-4:]
    if done.returncode != 0 or len(fields) != 4:
        raise Failure(f"curl {' '.join(args)} failed ({done.returncode}): {done.stderr.decode().strip()}")
    code, down, up, seconds = fields
    return int(code), int(down), int(up), float(seconds)


def load_args(port, name, out="/dev/null"):
    body = json.dumps({"filename": name, "folder": FOLDER})
    return [
        "-X", "POST", f"http://127.0.0.1:{port}/load/{name}",
        "-H", "content-type: application/json", "-d", body, "-o", out,
    ]


def timed_load(port, name, expected_len, out="/dev/null"):
    code, down, _, seconds = curl(load_args(port, name, out))
    if code != 200 or down != expected_len:
        raise Failure(f"/load {name}: HTTP {code}, {down} of {expected_len} bytes")
    return seconds


# --- the stack and fresh loaders ---------------------------------------------------


def start_moto(python, work):
    """moto's S3 server on a free port; (process, URL)."""
    port = free_port()
    proc = spawn([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], os.path.join(work, "moto.log"))
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"moto did not start; see {work}/moto.log")
            time.sleep(0.05)


class Stack:
    """One `azaion-loader dev` for its Resource API emulator and S3 server
    (its own s3s-fs, or the S3 server at `s3_endpoint`)."""

    def __init__(self, binary, work, s3_endpoint=None, name="stack"):
        self.data = os.path.join(work, name)
        os.makedirs(self.data)
        banner = os.path.join(work, f"{name}.log")
        extra = ["--s3-endpoint", s3_endpoint] if s3_endpoint else []
        self.proc = spawn(
            [binary, "dev", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", self.data, *extra],
            banner,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + 60
        self.api = self.s3 = None
        while time.monotonic() < deadline and not (self.api and self.s3):
            if self.proc.poll() is not None:
                raise Failure(f"the dev stack exited ({self.proc.returncode}); see {banner}")
            with open(banner, errors="replace") as f:
                text = f.read()
            api = re.search(r"Resource API \(emul\.\)\s+(http://\S+)", text)
            s3 = re.search(r"S3 \([^)]+\)\s+(http://\S+)", text)
            self.api = api and api.group(1)
            self.s3 = s3 and s3.group(1)
            time.sleep(0.1)
        if not (self.api and self.s3):
            raise Failure(f"the dev stack printed no peers within 60 s; see {banner}")


class Loader:
    """A fresh `azaion-loader serve` against the stack; its peak is its own."""

    count = 0

    def __init__(self, binary, work, stack, docker_host=None, images="", cache="loader-cache"):
        Loader.count += 1
        self.port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k != "DOCKER_HOST"},
            "LOADER_LISTEN": f"127.0.0.1:{self.port}",
            "RESOURCE_API_URL": stack.api,
            "MODEL_CACHE_DIR": os.path.join(work, cache),
            "IMAGES_PATH": os.path.join(work, "images.enc"),
            "LOADER_IMAGES": images,
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        }
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        self.log = os.path.join(work, f"loader-{Loader.count}.log")
        self.started = time.monotonic()
        self.proc = spawn([binary, "serve"], self.log, env=env)
        deadline = self.started + 30
        while not health_once(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"the loader did not come up; see {self.log}")
            time.sleep(0.001)
        self.up_after = time.monotonic() - self.started

    def login(self):
        status, body = http_call(self.port, "POST", "/login", {"email": EMAIL, "password": PASSWORD})
        if status != 200:
            raise Failure(f"login: HTTP {status} {body[:200]!r}")
        return self

    def peak_mib(self):
        return proc_status_kib(self.proc.pid, "VmHWM") / 1024

    def close(self):
        stop(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nginx_start(work, www):
    root = os.path.join(work, "nginx")
    os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
    port = free_port()
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
"""
        )
    proc = spawn(["nginx", "-p", root, "-c", conf], os.path.join(root, "stdout.log"))
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"nginx did not start; see {root}/error.log")
            time.sleep(0.02)
    return proc, port


# --- the table -------------------------------------------------------------------------


class Table:
    def __init__(self):
        self.rows = []

    def add(self, scenario, figure, baseline="—", ratio="—", target="", met=None):
        verdict = "—" if met is None else ("yes" if met else "NO")
        # The 1-minute load average as the row is measured: above ~0.5 before a
        # scenario means something else shared the CPUs.
        load = f"{os.getloadavg()[0]:.2f}"
        self.rows.append([scenario, figure, baseline, ratio, target, verdict, load])
        log(" | ".join(self.rows[-1]))

    def ratio_row(self, scenario, value, base, unit, base_label, minimum):
        ratio = value / base
        self.add(
            scenario,
            f"{value:.0f} {unit}",
            f"{base_label} {base:.0f} {unit}",
            f"{ratio:.2f}×",
            f"≥{minimum}×",
            ratio >= minimum,
        )

    def peak_row(self, scenario, peak_mib, limit_mib):
        self.add(scenario, f"{peak_mib:.1f} MiB", target=f"≤{limit_mib} MiB", met=peak_mib <= limit_mib)

    def skip(self, scenario, reason, target=""):
        self.add(scenario, f"skipped: {reason}", target=target)

    def render(self):
        head = ["scenario", "figure", "baseline", "ratio", "target", "met?", "load"]
        widths = [max(len(r[i]) for r in [head] + self.rows) for i in range(len(head))]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), rule] + [line(r) for r in self.rows])


# --- the scenarios -----------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.binary = args.binary
        self.table = Table()
        self.reps = args.reps
        self.mbps = {}
        big = args.big
        self.size_label = f"{big / GiB:g} GiB" if big >= GiB else f"{big / MiB:g} MiB"

    def best(self, measure, reps=None):
        return min(measure() for _ in range(reps or self.reps))

    def loader(self, **kw):
        return Loader(self.binary, self.work, self.stack, **kw)

    def scenario(self, name, rows, body):
        """Runs one scenario; a failure becomes a row instead of ending the run."""
        started = time.monotonic()
        log(f"{name} ...")
        try:
            body()
        except (Failure, subprocess.SubprocessError, OSError) as e:
            log(f"{name} failed: {e}")
            for row in rows:
                self.table.add(row, f"failed: {str(e)[:160]}", met=False)
        log(f"{name} took {time.monotonic() - started:.1f} s")

    # data -----------------------------------------------------------------

    def make_data(self):
        data = os.path.join(self.work, "data")
        os.makedirs(data)
        self.plain_big = os.path.join(data, BIG_NAME)
        self.plain_mid = os.path.join(data, MID_NAME)
        self.cipher_big = os.path.join(data, BIG_NAME + ".openssl-enc")
        self.key_hex = os.urandom(32).hex()
        self.iv_hex = os.urandom(16).hex()
        for path, size in ((self.plain_big, self.args.big), (self.plain_mid, 64 * MiB)):
            keystream(path, size)
        run(self.openssl("-e", self.plain_big, self.cipher_big))
        with open(self.plain_mid, "rb") as f:
            self.mid_sha256 = hashlib.file_digest(f, "sha256").hexdigest()

    def openssl(self, mode, src, dst="/dev/null", key_hex=None, iv_hex=None):
        return [
            "openssl", "enc", mode, "-aes-256-cbc",
            "-K", key_hex or self.key_hex, "-iv", iv_hex or self.iv_hex,
            "-bufsize", str(MiB), "-in", src, "-out", dst,
        ]

    # P1, P2 ----------------------------------------------------------------------

    def domain_mbps(self, op):
        done = run(
            [
                self.args.throughput, "--op", op, "--input", self.plain_big,
                "--key-hex", self.key_hex, "--iv-hex", self.iv_hex,
                "--chunk", str(MiB), "--reps", str(self.reps),
            ],
            stdout=subprocess.PIPE,
        )
        found = re.search(r"mb_per_s=([\d.]+)", done.stdout.decode())
        if not found:
            raise Failure(f"the throughput bench printed no figure: {done.stdout!r}")
        return float(found.group(1))

    def openssl_mbps(self, mode, src):
        def once():
            started = time.monotonic()
            run(self.openssl(mode, src))
            return time.monotonic() - started

        return self.args.big / self.best(once) / 1e6

    def p1_p2(self):
        size = self.size_label

        def p1():
            figure = self.domain_mbps("decrypt")
            base = self.openssl_mbps("-d", self.cipher_big)
            self.table.ratio_row(f"P1 domain decrypt {size}", figure, base, "MB/s", "openssl -d", 1.0)

        def p2():
            figure = self.domain_mbps("encrypt")
            base = self.openssl_mbps("-e", self.plain_big)
            self.mbps["openssl_e"] = base
            self.table.ratio_row(f"P2 domain encrypt {size}", figure, base, "MB/s", "openssl -e", 0.9)

        self.scenario("P1", ["P1 domain decrypt"], p1)
        self.scenario("P2", ["P2 domain encrypt"], p2)

    # P6 (first: it fills the CDN and the cache for P3-P5, P8) ------------------

    def upload(self, port, name, path):
        code, _, up, seconds = curl(
            [
                "-X", "POST", f"http://127.0.0.1:{port}/upload/{name}",
                "-F", f"folder={FOLDER}", "-F", f"data=@{path}", "-o", "/dev/null",
            ]
        )
        if code != 200:
            raise Failure(f"/upload {name}: HTTP {code}")
        return up, seconds

    def p6(self):
        with self.loader() as loader:
            loader.login()
            seconds = self.best(lambda: self.upload(loader.port, BIG_NAME, self.plain_big)[1], 2)
            peak = loader.peak_mib()
            self.upload(loader.port, MID_NAME, self.plain_mid)
        figure = self.args.big / seconds / 1e6
        # Baseline: one signed PUT of the same bytes to the same S3 server.
        put = self.best(lambda: self.s3_put(self.stack.s3, self.plain_big, "bench-put-ceiling.bin"), 2)
        self.s3_delete(self.stack.s3, "bench-put-ceiling.bin")
        self.table.ratio_row(
            f"P6 /upload {self.size_label}", figure, self.args.big / put / 1e6, "MB/s", "curl S3 PUT", 0.7
        )
        self.table.peak_row("P6 /upload peak RSS", peak, 128)
        base = self.mbps.get("openssl_e") or self.openssl_mbps("-e", self.plain_big)
        self.table.add(
            f"P6 context: openssl -e {self.size_label}", f"{base:.0f} MB/s", ratio=f"{figure / base:.2f}×",
            target="(information)",
        )

    def s3_delete(self, endpoint, key):
        curl(
            [
                "-X", "DELETE", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", S3_WRITER,
                f"{endpoint}/{FOLDER}/{key}", "-o", "/dev/null",
            ]
        )

    def s3_object_len(self, endpoint, key):
        """Content-Length of a signed HEAD."""
        done = subprocess.run(
            [
                "curl", "-sS", "-I", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", S3_READER,
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", f"{endpoint}/{FOLDER}/{key}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        found = re.search(rb"(?im)^content-length:\s*(\d+)", done.stdout)
        if done.returncode != 0 or not found or not done.stdout.startswith(b"HTTP/1.1 200"):
            raise Failure(f"signed S3 HEAD {key}: {done.stdout[:80]!r} {done.stderr.decode().strip()}")
        return int(found.group(1))

    def signed_get(self, endpoint, key, expected_len):
        code, down, _, s = curl(
            [
                "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", S3_READER,
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                f"{endpoint}/{FOLDER}/{key}", "-o", "/dev/null",
            ]
        )
        if code != 200 or down != expected_len:
            raise Failure(f"signed S3 GET: HTTP {code}, {down} of {expected_len} bytes")
        return s

    def s3_put(self, endpoint, path, key):
        code, _, up, seconds = curl(
            [
                "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", S3_WRITER,
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "-T", path, f"{endpoint}/{FOLDER}/{key}", "-o", "/dev/null",
            ]
        )
        if code != 200 or up != os.path.getsize(path):
            raise Failure(f"signed S3 PUT: HTTP {code}, {up} bytes sent")
        return seconds

    # P3 ----------------------------------------------------------------------------

    def p3(self):
        www = os.path.join(self.work, "www")
        os.makedirs(www, exist_ok=True)
        os.link(self.plain_big, os.path.join(www, BIG_NAME))
        nginx, nginx_port = nginx_start(self.work, www)
        try:
            with self.loader() as loader:
                loader.login()
                seconds = self.best(lambda: timed_load(loader.port, BIG_NAME, self.args.big))
                peak = loader.peak_mib()

            def from_nginx():
                code, down, _, s = curl([f"http://127.0.0.1:{nginx_port}/{BIG_NAME}", "-o", "/dev/null"])
                if code != 200 or down != self.args.big:
                    raise Failure(f"nginx: HTTP {code}, {down} bytes")
                return s

            base_seconds = self.best(from_nginx)
        finally:
            stop(nginx)
        figure = self.args.big / seconds / 1e6
        self.mbps["load_cache"] = figure
        self.table.ratio_row(f"P3 /load {self.size_label}, cache", figure, self.args.big / base_seconds / 1e6, "MB/s", "nginx", 0.8)
        self.table.peak_row("P3 /load peak RSS", peak, 64)

    # P4 ----------------------------------------------------------------------------

    def cache_entry(self, name, cache="loader-cache"):
        return os.path.join(self.work, cache, FOLDER, name + ".big")

    def p4(self):
        entry = self.cache_entry(BIG_NAME)
        big_part_len = self.s3_object_len(self.stack.s3, BIG_NAME + ".big")

        def from_s3():
            if os.path.exists(entry):
                os.remove(entry)
            return timed_load(loader.port, BIG_NAME, self.args.big)

        with self.loader() as loader:
            loader.login()
            seconds = self.best(from_s3)
            peak = loader.peak_mib()
        if not os.path.exists(entry):
            raise Failure("a load from the CDN did not fill the cache")

        base_seconds = self.best(lambda: self.signed_get(self.stack.s3, BIG_NAME + ".big", big_part_len))
        self.table.ratio_row(
            f"P4 /load {self.size_label}, S3",
            self.args.big / seconds / 1e6,
            big_part_len / base_seconds / 1e6,
            "MB/s",
            "curl S3 GET",
            0.8,
        )
        self.table.peak_row("P4 /load peak RSS", peak, 64)

    # P10 ---------------------------------------------------------------------------

    def p10(self):
        """/load with the big part only in an S3 whose ranged GET costs a read of the
        whole object (moto), against one plain signed GET from the same server."""
        moto = stack = None
        cache = "loader-cache" if self.args.s3 == "moto" else "loader-cache-moto"
        try:
            if self.args.s3 == "moto":
                stack = self.stack
            else:
                moto, url = start_moto(self.args.moto_python, self.work)
                stack = Stack(self.binary, self.work, s3_endpoint=url, name="stack-moto")
                with Loader(self.binary, self.work, stack, cache=cache) as loader:
                    loader.login()
                    self.upload(loader.port, BIG_NAME, self.plain_big)
            entry = self.cache_entry(BIG_NAME, cache)
            big_part_len = self.s3_object_len(stack.s3, BIG_NAME + ".big")

            def from_s3():
                if os.path.exists(entry):
                    os.remove(entry)
                return timed_load(loader.port, BIG_NAME, self.args.big)

            with Loader(self.binary, self.work, stack, cache=cache) as loader:
                loader.login()
                seconds = self.best(from_s3, 2)
                peak = loader.peak_mib()
                said = open(loader.log, errors="replace").read()
            base_seconds = self.best(lambda: self.signed_get(stack.s3, BIG_NAME + ".big", big_part_len), 2)
        finally:
            if moto is not None:
                if stack is not None:
                    stop(stack.proc)
                stop(moto)
        self.table.ratio_row(
            f"P10 /load {self.size_label}, S3 reading the whole object per range (moto)",
            self.args.big / seconds / 1e6,
            big_part_len / base_seconds / 1e6,
            "MB/s",
            "plain S3 GET",
            0.3,
        )
        fallbacks = said.count("slow to answer ranged reads")
        self.table.add("P10 ranged reads given up for the plain GET", f"{fallbacks} of 2 loads", target="(information)")
        self.table.peak_row("P10 /load peak RSS", peak, 64)

    # P5 ----------------------------------------------------------------------------

    def p5(self):
        streams = self.args.streams
        out_dir = tempfile.mkdtemp(prefix="azaion-bench-p5.", dir="/dev/shm" if os.path.isdir("/dev/shm") else self.work)
        try:
            with self.loader() as loader:
                loader.login()
                # The single stream writes its file where the 32 do (tmpfs), so both pay the same.
                single_out = os.path.join(out_dir, "single")
                single = self.best(lambda: timed_load(loader.port, MID_NAME, 64 * MiB, single_out))
                os.remove(single_out)
                outs = [os.path.join(out_dir, f"out.{i}") for i in range(streams)]
                started = time.monotonic()
                procs = [
                    subprocess.Popen(
                        ["curl", "-sS", "-w", CURL_WRITE_OUT, *load_args(loader.port, MID_NAME, out)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                    for out in outs
                ]
                results = [p.communicate(timeout=600) for p in procs]
                wall = time.monotonic() - started
                peak = loader.peak_mib()
            failed = [
                (p.returncode, stderr.decode().strip())
                for p, (_, stderr) in zip(procs, results)
                if p.returncode != 0
            ]
            exact = 0
            for out in outs:
                if os.path.exists(out):
                    with open(out, "rb") as f:
                        exact += hashlib.file_digest(f, "sha256").hexdigest() == self.mid_sha256
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        single_mbps = 64 * MiB / single / 1e6
        aggregate = streams * 64 * MiB / wall / 1e6
        self.table.ratio_row(
            f"P5 {streams}× /load 64 MiB, aggregate", aggregate, single_mbps, "MB/s", "1 stream", 1.0
        )
        self.table.add(
            f"P5 byte-exact (sha256)",
            f"{exact}/{streams}" + (f" ({len(failed)} curl failed: {failed[0][1][:80]})" if failed else ""),
            target=f"{streams}/{streams}",
            met=exact == streams,
        )
        self.table.peak_row("P5 peak RSS", peak, 256)

    # P8 ----------------------------------------------------------------------------

    def wrk_p99_ms(self, port, seconds, paced):
        """p99 of GET /status over 64 connections: flat out, or with each
        connection pausing 10 ms between requests (scripts/bench/paced.lua)."""
        pacing = ["-s", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paced.lua")] if paced else []
        done = run(
            ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", *pacing, f"http://127.0.0.1:{port}/status"],
            stdout=subprocess.PIPE,
            timeout=seconds + 60,
        )
        text = done.stdout.decode()
        found = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        requests = re.search(r"(\d+) requests in", text)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if not found:
            raise Failure(f"wrk printed no 99th percentile: {text[-400:]}")
        if errors:
            raise Failure(f"wrk saw {errors.group(1)} failed /status answers")
        value = float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]
        return value, int(requests.group(1)) if requests else 0

    def p8(self):
        with self.loader() as loader:
            loader.login()
            idle_paced, _ = self.wrk_p99_ms(loader.port, 3, paced=True)
            idle_flat, _ = self.wrk_p99_ms(loader.port, 3, paced=False)
            stop_flag = threading.Event()
            streamed = []

            def loads():
                for _ in range(100):  # bounded; stops long before
                    if stop_flag.is_set():
                        return
                    try:
                        timed_load(loader.port, BIG_NAME, self.args.big)
                        streamed.append(self.args.big)
                    except Failure as e:
                        streamed.append(e)
                        return

            background = threading.Thread(target=loads, daemon=True)
            background.start()
            time.sleep(0.3)  # the first load is under way
            busy_paced, paced_requests = self.wrk_p99_ms(loader.port, 5, paced=True)
            busy_flat, flat_requests = self.wrk_p99_ms(loader.port, 5, paced=False)
            stop_flag.set()
            background.join(120)
        errors = [e for e in streamed if isinstance(e, Exception)]
        if errors:
            raise Failure(f"the background /load failed: {errors[0]}")
        self.table.add(
            f"P8 /status p99, 64 conns × 100 req/s, {self.size_label} /loads streaming ({paced_requests} req)",
            f"{busy_paced:.2f} ms",
            f"idle {idle_paced:.2f} ms",
            f"{busy_paced / idle_paced:.1f}×",
            "≤10 ms",
            busy_paced <= 10,
        )
        self.table.add(
            f"P8 same, 64 conns flat out ({flat_requests} req)",
            f"{busy_flat:.2f} ms",
            f"idle {idle_flat:.2f} ms",
            f"{busy_flat / idle_flat:.1f}×",
            "(information)",
        )

    # P9 ----------------------------------------------------------------------------

    def p9(self):
        starts = []
        for _ in range(5):
            with self.loader() as loader:
                starts.append(loader.up_after * 1000)
        median = statistics.median(starts)
        self.table.add(
            "P9 start to first 200 /health (median of 5)",
            f"{median:.1f} ms",
            f"min {min(starts):.1f} ms",
            target="≤100 ms",
            met=median <= 100,
        )
        size = os.path.getsize(self.binary) / 1e6
        self.table.add("P9 release binary size (stripped)", f"{size:.1f} MB", target="≤20 MB", met=size <= 20)

    # P7 ----------------------------------------------------------------------------

    def remove_image(self):
        subprocess.run(
            ["docker", "-H", self.args.docker_host, "rmi", "-f", IMAGE_REF],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
        )

    def image_present(self):
        return (
            subprocess.run(
                ["docker", "-H", self.args.docker_host, "image", "inspect", IMAGE_REF],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            ).returncode
            == 0
        )

    def p7(self):
        rows = ["P7 unlock 2 GiB, wall", "P7 unlock peak RSS", "P7 plaintext bytes on disk"]
        if not self.args.docker_host:
            for row in rows:
                self.table.skip(row, self.args.docker_skip or "no Docker daemon")
            return
        if not shutil.which("docker"):
            for row in rows:
                self.table.skip(row, "no docker CLI for the baseline")
            return
        archive = os.path.join(self.work, "images.enc")
        key = hashlib.sha256(DEV_FRAGMENT).digest()
        built = docker_archive.write_encrypted(archive, self.args.archive, IMAGE_REF, key)
        log(f"P7 archive: {built['plaintext_len']} bytes of docker-save, {os.path.getsize(archive)} encrypted")
        try:
            self.remove_image()
            # Baseline: openssl enc -d | docker load on the same daemon.
            started = time.monotonic()
            with open(archive, "rb") as src:
                src.seek(16)
                dec = subprocess.Popen(
                    ["openssl", "enc", "-d", "-aes-256-cbc", "-K", key.hex(), "-iv", built["iv"].hex(), "-bufsize", str(MiB)],
                    stdin=src,
                    stdout=subprocess.PIPE,
                )
                load = subprocess.Popen(
                    ["docker", "-H", self.args.docker_host, "load"],
                    stdin=dec.stdout,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                dec.stdout.close()
                said = load.communicate(timeout=1800)[0].decode()
                dec.wait(60)
            base_wall = time.monotonic() - started
            if load.returncode != 0 or dec.returncode != 0 or not self.image_present():
                raise Failure(f"the baseline docker load failed: {said.strip()[-300:]}")
            self.remove_image()
            if self.image_present():
                raise Failure(f"{IMAGE_REF} is still present after docker rmi")

            with self.loader(docker_host=self.args.docker_host, images=IMAGE_REF) as loader:
                written_before = proc_write_bytes(loader.proc.pid)
                started = time.monotonic()
                status, body = http_call(loader.port, "POST", "/unlock", {"email": EMAIL, "password": PASSWORD})
                if status != 200:
                    raise Failure(f"/unlock: HTTP {status} {body[:200]!r}")
                deadline = started + 1800
                while True:
                    status, body = http_call(loader.port, "GET", "/unlock/status")
                    state = json.loads(body)
                    if state["state"] in ("ready", "error") or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                wall = time.monotonic() - started
                peak = loader.peak_mib()
                written = proc_write_bytes(loader.proc.pid) - written_before
            if state["state"] != "ready":
                raise Failure(f"unlock ended in {state['state']}: {state.get('error')}")
            if not self.image_present():
                raise Failure(f"unlock said ready but {IMAGE_REF} is not present")
        finally:
            self.remove_image()
            os.remove(archive)
        ratio = wall / base_wall
        self.table.add(
            f"P7 unlock {built['plaintext_len'] / GiB:.1f} GiB, wall",
            f"{wall:.1f} s",
            f"openssl -d + docker load {base_wall:.1f} s",
            f"{ratio:.2f}×",
            "≤1.1×",
            ratio <= 1.1,
        )
        self.table.peak_row("P7 unlock peak RSS", peak, 64)
        self.table.add("P7 loader's own disk writes during unlock", f"{written} bytes", target="0 bytes", met=written == 0)

    # all ---------------------------------------------------------------------------

    def run(self):
        started = time.monotonic()
        self.load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        log(f"work folder {self.work}; load average {self.load_at_start}")
        self.make_data()
        log(f"data made ({time.monotonic() - started:.1f} s)")
        self.moto = None
        if self.args.s3 == "moto":
            self.moto, url = start_moto(self.args.moto_python, self.work)
            self.stack = Stack(self.binary, self.work, s3_endpoint=url)
        else:
            self.stack = Stack(self.binary, self.work)
        log(f"dev stack: API {self.stack.api}, S3 ({self.args.s3}) {self.stack.s3}")
        only = set(self.args.only.split(",")) if self.args.only else None
        want = lambda name: only is None or name in only
        self.p1_p2() if want("P1") or want("P2") else None
        needs_upload = any(want(p) for p in ("P3", "P4", "P5", "P6", "P8")) or (want("P10") and self.args.s3 == "moto")
        if needs_upload:
            self.scenario("P6", ["P6 /upload 1 GiB", "P6 /upload peak RSS"], self.p6)
        for name, rows, body in (
            ("P3", ["P3 /load 1 GiB, cache", "P3 /load peak RSS"], self.p3),
            ("P4", ["P4 /load 1 GiB, S3", "P4 /load peak RSS"], self.p4),
            ("P5", ["P5 concurrent /load", "P5 peak RSS"], self.p5),
            ("P8", ["P8 /status p99 under /load"], self.p8),
            ("P10", ["P10 /load from a whole-read-per-range S3", "P10 peak RSS"], self.p10),
            ("P9", ["P9 start to first 200 /health"], self.p9),
            ("P7", ["P7 unlock"], self.p7),
        ):
            if want(name):
                self.scenario(name, rows, body)
        stop(self.stack.proc)
        if self.moto is not None:
            stop(self.moto)
        took = time.monotonic() - started
        log(f"all scenarios took {took:.0f} s")
        table = self.table.render() + (
            f"\n\nS3 server: {self.args.s3}. {os.cpu_count()} CPUs; the scenarios took {took:.0f} s; load average (1/5/15 min) before"
            f" them {self.load_at_start}: above ~0.5, other work shared the CPUs and the figures measured it too."
        )
        print(table, flush=True)
        if self.args.markdown:
            with open(self.args.markdown, "w") as f:
                f.write(table + "\n")
        missed = sum(1 for r in self.table.rows if r[5] == "NO")
        return 1 if missed and self.args.strict else 0


def keystream(path, size):
    """`size` incompressible bytes: AES-CTR of zeros under a random key."""
    with open(path, "wb") as out:
        gen = subprocess.Popen(
            ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", os.urandom(16).hex(), "-iv", os.urandom(16).hex(), "-in", "/dev/zero"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        left = size
        while left:
            chunk = gen.stdout.read(min(left, 4 * MiB))
            if not chunk:
                raise Failure("the key stream ended early")
            out.write(chunk)
            left -= len(chunk)
        gen.kill()
        gen.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="target/release/azaion-loader")
    parser.add_argument("--throughput", required=True, help="the built `throughput` bench executable")
    parser.add_argument("--work", required=True, help="an empty scratch folder (needs ~6 GiB)")
    parser.add_argument("--docker-host", default="", help="DOCKER_HOST of a daemon for P7")
    parser.add_argument("--docker-skip", default="", help="why there is no daemon (printed in P7's rows)")
    parser.add_argument("--reps", type=int, default=3, help="runs per throughput figure (the best counts)")
    parser.add_argument("--big", type=int, default=GiB, help="bytes of the big resource (P1-P4, P6, P8)")
    parser.add_argument("--archive", type=int, default=2 * GiB, help="bytes of the P7 layer")
    parser.add_argument("--streams", type=int, default=32, help="concurrent loads in P5")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. P3,P4")
    parser.add_argument("--s3", choices=["s3s", "moto"], default="s3s", help="the S3 server of P3-P6, P8")
    parser.add_argument("--moto-python", default="python3", help="a Python with moto[server] (scripts/moto.sh)")
    parser.add_argument("--markdown", default="", help="also write the table here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    global WORK
    WORK = args.work
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        return Bench(args).run()
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
