#!/usr/bin/env python3
"""Load benchmark of the EDR example's telemetry route, with wrk.

    python3 scripts/loadbench.py

Builds `examples/edr/`, `examples/naive_baseline.rs` and
`examples/evalsha_baseline.rs` in release, starts a
redis-server of its own (a free port, no persistence; never the one on 6379)
and, for the cluster variants, a Redis Cluster of its own (three primaries, no
replicas, on free ports; created with `redis-cli --cluster create`), installs
wrk from Debian's package if it is missing, and then, for each
scenario and variant, starts the server with QUEUE_URL=off (so the figures
measure the limiter, not the queue hand-off), waits for /healthz, and runs

    wrk -t1 -c64 -d10s --latency -s scripts/wrk/<scenario>.lua <url>

Scenarios (scripts/wrk/*.lua; every request a small JSON POST with an
X-Agent-Token):
  allowed  a random token from a pool of 10,000; TELEMETRY_RATE=1000000000/m,
           so nothing is denied
  flood    one token; TELEMETRY_RATE=1000/m, so nearly everything is a 429
  mixed    90 % pool tokens (allowed), 10 % one flooding token;
           TELEMETRY_RATE=1000/m
  hot      a random token from a pool of 100, each sending hundreds of
           requests a second; TELEMETRY_RATE=1000000000/m, so nothing is
           denied: the keys lease mode is for

Variants:
  off          the EDR example with RATE_LIMIT=off: no limiter (the baseline
               of the ratios)
  memory       the EDR example, in-memory store (block cache off)
  redis        the EDR example, Redis store, TELEMETRY_BLOCK_CACHE=off (its
               Prometheus recorder installed, as by default)
  redis-no-metrics
               the same with METRICS=off: no metrics recorder, the baseline
               of what the metrics cost
  redis+cache  the EDR example, Redis store and block cache (its default)
  cluster      the EDR example on the Redis Cluster (REDIS_CLUSTER_NODES, the
               three primaries' URLs), TELEMETRY_BLOCK_CACHE=off
  cluster+cache
               the same with the block cache (TELEMETRY_BLOCK_CACHE=on)
  naive        examples/naive_baseline.rs: GET, INCR, EXPIRE per request
  evalsha      examples/evalsha_baseline.rs: one EVALSHA of a minimal fixed
               window per request (INCRBY, then PEXPIRE or PTTL inside it;
               examples/minimal_baseline.lua), as a careful user would write
  lease        the EDR example, Redis store in lease mode (TELEMETRY_LEASE=64),
               TELEMETRY_BLOCK_CACHE=off
  lease-2      the same on two app servers sharing Redis
               (TELEMETRY_INSTANCES=2), each loaded by a wrk of half the
               connections at once; req/s summed, the slower percentiles

Each round runs every scenario and, within it, every variant, the variants'
order rotated from round to round; ROUNDS rounds, so that a noisy machine
shows up as the spread between min and max. Redis is flushed before each run
(it is ours; the cluster's three primaries too) and each run starts a fresh
server process. For each run it reads wrk's req/s and p50/p99 latency and
Redis's INFO commandstats before and after (for the cluster variants, on each
of the three primaries, summed; their CPU time too), and prints one markdown
table per scenario with medians and ratios against the no-limiter variant,
then, for each pair measured, how cluster compares with redis (and
cluster+cache with redis+cache), redis with redis-no-metrics, and redis with
evalsha (issue 11: at least 1.0 × its req/s on the allowed path), lease with
memory and redis, and lease-2 with memory (issue 11: lease mode at least
0.9 × the memory store's throughput on the hot path, with at most 0.05 Redis
commands per request, 0.1 on two app servers): the server's CPU per request
and req/s.

The cluster is started once, before the first run, only if a cluster variant
is asked for, and stopped at the end as the redis-server is (also on an error,
Ctrl-C or SIGTERM).

Environment (defaults in brackets):
  DURATION [10]      seconds per wrk run
  ROUNDS [3]         rounds
  VARIANTS [off,memory,redis,redis-no-metrics,redis+cache,cluster,cluster+cache,naive,
            evalsha,lease,lease-2]
  SCENARIOS [allowed,flood,mixed,hot]
  CONNECTIONS [64]   wrk -c
  THREADS [1]        wrk -t
  REDIS_SERVER [redis-server]
  REDIS_CLI [redis-cli]  for `--cluster create` (the cluster variants only)

A full default run takes about 15 minutes plus the build. Quick check:
  DURATION=2 ROUNDS=1 VARIANTS=off,redis SCENARIOS=flood python3 scripts/loadbench.py
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TELEMETRY_PATH = "/api/v1/telemetry/"

ALL_VARIANTS = [
    "off", "memory", "redis", "redis-no-metrics", "redis+cache", "cluster", "cluster+cache", "naive",
    "evalsha", "lease", "lease-2",
]
# Lease mode (TELEMETRY_LEASE) with two app servers sharing Redis, each
# loaded by a wrk of half the connections.
TWO_SERVERS = {"lease-2"}
# The largest slice of the lease variants.
LEASE_SLICE = "64"
CLUSTER_VARIANTS = {"cluster", "cluster+cache"}
# Primaries of the cluster variants' Redis Cluster (no replicas).
CLUSTER_SIZE = 3
ALL_SCENARIOS = ["allowed", "flood", "mixed", "hot"]
SCENARIO_RATE = {
    "allowed": "1000000000/m",
    "flood": "1000/m",
    "mixed": "1000/m",
    "hot": "1000000000/m",
}
# The commands each variant sends itself. Redis also counts the commands a
# script runs inside EVALSHA in commandstats, so summing every cmdstat would
# count the EDR example's work twice.
TOP_LEVEL = {
    "off": (),
    "memory": (),
    "redis": ("evalsha", "eval", "script"),
    "redis-no-metrics": ("evalsha", "eval", "script"),
    "redis+cache": ("evalsha", "eval", "script"),
    "cluster": ("evalsha", "eval", "script"),
    "cluster+cache": ("evalsha", "eval", "script"),
    "naive": ("get", "incr", "expire"),
    # INCRBY and PEXPIRE or PTTL run inside its EVALSHA ('all cmds/req').
    "evalsha": ("evalsha", "eval", "script"),
    # One EVALSHA per slice granted (or denial), none per request decided
    # from a slice.
    "lease": ("evalsha", "eval", "script"),
    "lease-2": ("evalsha", "eval", "script"),
}
# Ours, not the variants'.
ADMIN = {"info", "flushall", "ping", "config", "client", "hello", "command"}


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        sys.exit(f"loadbench: {name}={text!r} is not a whole number")
    if value < 1:
        sys.exit(f"loadbench: {name} must be at least 1")
    return value


def env_list(name: str, allowed: list[str]) -> list[str]:
    text = os.environ.get(name, "").strip()
    if not text:
        return list(allowed)
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        sys.exit(f"loadbench: {name}={text!r}: choose from {','.join(allowed)}")
    return items


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ redis


class Redis:
    """Just enough RESP for PING, FLUSHALL and INFO."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, *args: str):
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"Redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"Redis: unexpected reply {line!r}")

    def commandstats(self) -> dict[str, tuple[int, int]]:
        """Calls and microseconds spent, per command."""
        stats = {}
        for line in self.call("INFO", "commandstats").splitlines():
            match = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
            if match:
                stats[match.group(1)] = (int(match.group(2)), int(match.group(3)))
        return stats

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class Server:
    """A redis-server of ours: the process, its port and a client."""

    process: subprocess.Popen
    port: int
    client: Redis | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def spawn_redis(binary: str, workdir: Path, port: int, logname: str, *extra: str) -> Server:
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=open(workdir / logname, "wb"),
        stderr=subprocess.STDOUT,
    )
    return Server(process=process, port=port)


def wait_ping(server: Server, logfile: Path) -> None:
    """Waits for PONG, then keeps the client."""
    deadline = time.monotonic() + 10
    while True:
        try:
            client = Redis(server.port)
            if client.call("PING") == "PONG":
                server.client = client
                return
            client.close()
        except OSError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            # The log goes with the temporary directory: quoted here.
            sys.exit(f"loadbench: redis-server did not start:\n{logfile.read_text(errors='replace')}")
        time.sleep(0.05)


def start_redis(binary: str, workdir: Path, servers: list[Server]) -> Server:
    """One redis-server; appended to `servers` as soon as it runs, for the
    caller to stop whatever happens."""
    server = spawn_redis(binary, workdir, free_port(), "redis.log")
    servers.append(server)
    wait_ping(server, workdir / "redis.log")
    return server


def start_cluster(binary: str, cli: str, workdir: Path, servers: list[Server]) -> list[Server]:
    """A Redis Cluster of CLUSTER_SIZE primaries and no replicas, each on a
    free port with its bus on another (the default, port + 10000, may not be
    free or even exist), created with `redis-cli --cluster create`; returns
    once every node says cluster_state:ok. Each node is appended to
    `servers` as soon as it runs, for the caller to stop whatever happens."""
    ports = free_ports(2 * CLUSTER_SIZE)
    nodes = []
    for port, bus in zip(ports[:CLUSTER_SIZE], ports[CLUSTER_SIZE:]):
        node = spawn_redis(
            binary, workdir, port, f"cluster-{port}.log",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
            "--cluster-port", str(bus),
        )
        servers.append(node)
        nodes.append(node)
    for node in nodes:
        wait_ping(node, workdir / f"cluster-{node.port}.log")
    command = [
        cli, "--cluster", "create",
        *(f"127.0.0.1:{node.port}" for node in nodes),
        "--cluster-replicas", "0", "--cluster-yes",
    ]
    log(f"$ {shlex.join(command)}")
    created = subprocess.run(
        command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    if created.returncode != 0:
        sys.exit(
            f"loadbench: redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
        )
    deadline = time.monotonic() + 30
    while True:
        infos = [node.client.call("CLUSTER", "INFO") for node in nodes]
        if all(
            "cluster_state:ok" in info.split() and f"cluster_known_nodes:{CLUSTER_SIZE}" in info.split()
            for info in infos
        ):
            return nodes
        if time.monotonic() > deadline:
            sys.exit(
                "loadbench: the cluster is not ok after 30 s:\n"
                + "\n".join(f"127.0.0.1:{n.port}:\n{i}" for n, i in zip(nodes, infos))
            )
        time.sleep(0.1)


def stop_servers(servers: list[Server]) -> None:
    for server in servers:
        if server.client:
            try:
                server.client.close()
            except OSError:
                pass
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# ------------------------------------------------------------------ setup


def build() -> Path:
    command = [
        "cargo", "build", "--release", "--example", "edr", "--example", "naive_baseline",
        "--example", "evalsha_baseline",
    ]
    log(f"$ {shlex.join(command)}")
    subprocess.run(command, cwd=ROOT, check=True)
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return Path(json.loads(metadata.stdout)["target_directory"]) / "release" / "examples"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log("wrk not found: installing Debian's package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Its chatter goes to stderr, beside the progress lines; stdout is the report.
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(sudo + command, check=True, env=env, stdout=sys.stderr)
    found = shutil.which("wrk")
    if not found:
        sys.exit("loadbench: wrk is still missing after apt-get install")
    return found


# ------------------------------------------------------------------ one run


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str
    commands: int
    all_commands: int
    redis_usec: int
    load: float
    # CPU seconds during the wrk run: the server, redis-server (the cluster
    # variants: its three primaries, summed), wrk.
    cpu_server: float
    cpu_redis: float
    cpu_wrk: float


@dataclass
class Setup:
    examples: Path
    wrk: str
    redis: Server
    # The cluster's primaries; empty if no cluster variant is measured.
    cluster: list[Server]
    duration: int
    connections: int
    threads: int
    workdir: Path
    runs: dict = field(default_factory=dict)


def server_command(setup: Setup, variant: str, scenario: str, port: int):
    env = {
        key: value
        for key, value in os.environ.items()
        # The examples' own variables never leak in from outside.
        if not (key.startswith("TELEMETRY_") or key in {
            "LISTEN_ADDR", "REDIS_URL", "QUEUE_URL", "RATE_LIMIT", "POLICY_FILE",
            "LOGIN_RATE", "DASHBOARD_RATE", "TRUSTED_PROXIES", "RUST_LOG",
            "REDIS_CLUSTER_NODES", "REDIS_SENTINELS", "REDIS_MASTER_NAME",
            "REDIS_MASTER_USERNAME", "REDIS_MASTER_PASSWORD", "REDIS_TLS_CA",
            "REDIS_TLS_CERT", "REDIS_TLS_KEY", "QUEUE_DEDUP_SECONDS",
            "METRICS", "METRICS_ADDR", "LOGIN_MODE", "DASHBOARD_MODE",
        })
    }
    redis_url = f"redis://127.0.0.1:{setup.redis.port}/1"
    # A cluster has only database 0.
    cluster_nodes = ",".join(f"redis://127.0.0.1:{node.port}" for node in setup.cluster)
    env.update(
        LISTEN_ADDR=f"127.0.0.1:{port}",
        QUEUE_URL="off",
        TELEMETRY_RATE=SCENARIO_RATE[scenario],
        RUST_LOG="warn",
    )
    binary = setup.examples / "edr"
    if variant == "off":
        env["RATE_LIMIT"] = "off"
    elif variant == "memory":
        env["TELEMETRY_BLOCK_CACHE"] = "off"
    elif variant == "redis":
        env.update(REDIS_URL=redis_url, TELEMETRY_BLOCK_CACHE="off")
    elif variant == "redis-no-metrics":
        env.update(REDIS_URL=redis_url, TELEMETRY_BLOCK_CACHE="off", METRICS="off")
    elif variant == "redis+cache":
        env.update(REDIS_URL=redis_url, TELEMETRY_BLOCK_CACHE="on")
    elif variant == "cluster":
        env.update(REDIS_CLUSTER_NODES=cluster_nodes, TELEMETRY_BLOCK_CACHE="off")
    elif variant == "cluster+cache":
        env.update(REDIS_CLUSTER_NODES=cluster_nodes, TELEMETRY_BLOCK_CACHE="on")
    elif variant == "naive":
        binary = setup.examples / "naive_baseline"
        env["REDIS_URL"] = redis_url
    elif variant == "evalsha":
        binary = setup.examples / "evalsha_baseline"
        env["REDIS_URL"] = redis_url
    elif variant == "lease":
        env.update(REDIS_URL=redis_url, TELEMETRY_BLOCK_CACHE="off", TELEMETRY_LEASE=LEASE_SLICE)
    elif variant == "lease-2":
        env.update(
            REDIS_URL=redis_url, TELEMETRY_BLOCK_CACHE="off", TELEMETRY_LEASE=LEASE_SLICE,
            TELEMETRY_INSTANCES="2",
        )
    return [str(binary)], env


def wait_healthy(process: subprocess.Popen, port: int, logfile: Path) -> None:
    deadline = time.monotonic() + 30
    url = f"http://127.0.0.1:{port}/healthz"
    while True:
        if process.poll() is not None:
            sys.exit(f"loadbench: the server exited at startup:\n{logfile.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            sys.exit(f"loadbench: no /healthz within 30 s:\n{logfile.read_text()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unexpected latency {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict:
    def find(pattern: str) -> re.Match:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise ValueError(f"no {pattern!r} in wrk's output:\n{output}")
        return match

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    return {
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "p50_ms": to_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        "p99_ms": to_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        "requests": int(find(r"^\s+(\d+) requests in").group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def wrk_command(setup: Setup, scenario: str, port: int, share: int = 1) -> list[str]:
    return [
        setup.wrk,
        f"-t{setup.threads}",
        f"-c{max(setup.connections // share, 1)}",
        f"-d{setup.duration}s",
        "--latency",
        "-s", str(ROOT / "scripts" / "wrk" / f"{scenario}.lua"),
        f"http://127.0.0.1:{port}{TELEMETRY_PATH}",
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def servers_of(setup: Setup, variant: str) -> list[Server]:
    """The redis-servers whose commands and CPU count for `variant`."""
    return setup.cluster if variant in CLUSTER_VARIANTS else [setup.redis]


def commandstats(servers: list[Server]) -> dict[str, tuple[int, int]]:
    """INFO commandstats, summed over `servers`."""
    total: dict[str, tuple[int, int]] = {}
    for server in servers:
        for name, (calls, usec) in server.client.commandstats().items():
            old_calls, old_usec = total.get(name, (0, 0))
            total[name] = (old_calls + calls, old_usec + usec)
    return total


def combine_wrk(results: list[dict]) -> dict:
    """Several wrk runs at once as one: requests and throughput summed, the
    slowest percentiles."""
    return {
        "rps": sum(r["rps"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "socket_errors": "; ".join(r["socket_errors"] for r in results if r["socket_errors"]),
    }


def run_once(setup: Setup, variant: str, scenario: str) -> Run:
    # Every server of ours, whichever the variant uses.
    for server in [setup.redis, *setup.cluster]:
        server.client.call("FLUSHALL")
    servers = servers_of(setup, variant)
    count = 2 if variant in TWO_SERVERS else 1
    processes: list[tuple[subprocess.Popen, int, Path]] = []
    for index in range(count):
        port = free_port()
        command, env = server_command(setup, variant, scenario, port)
        logfile = setup.workdir / f"{variant}-{scenario}-{index}.log"
        with open(logfile, "wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        processes.append((process, port, logfile))

    def cpu() -> tuple[float, float, float]:
        return (
            sum(cpu_seconds(process.pid) for process, _, _ in processes),
            sum(cpu_seconds(server.pid) for server in servers),
            children_cpu(),
        )

    try:
        for process, port, logfile in processes:
            wait_healthy(process, port, logfile)
        before = commandstats(servers)
        load = os.getloadavg()[0]
        cpu_before = cpu()
        loads = [
            subprocess.Popen(
                wrk_command(setup, scenario, port, count),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _, port, _ in processes
        ]
        outputs = [wrk.communicate(timeout=setup.duration + 60) for wrk in loads]
        cpu_after = cpu()
        after = commandstats(servers)
    finally:
        for process, _, _ in processes:
            stop(process)
    for wrk, (stdout, stderr) in zip(loads, outputs):
        if wrk.returncode != 0:
            sys.exit(f"loadbench: wrk failed:\n{stdout}{stderr}")
    result = combine_wrk([parse_wrk(stdout) for stdout, _ in outputs])
    zero = (0, 0)
    delta = {
        name: tuple(a - b for a, b in zip(stats, before.get(name, zero)))
        for name, stats in after.items()
    }
    top_level = [delta.get(name, zero) for name in TOP_LEVEL[variant]]
    return Run(
        commands=sum(calls for calls, _ in top_level),
        # A script's time includes that of the commands it runs.
        redis_usec=sum(usec for _, usec in top_level),
        all_commands=sum(calls for name, (calls, _) in delta.items() if name not in ADMIN),
        load=load,
        cpu_server=cpu_after[0] - cpu_before[0],
        cpu_redis=cpu_after[1] - cpu_before[1],
        cpu_wrk=cpu_after[2] - cpu_before[2],
        **result,
    )


# ------------------------------------------------------------------ report


def fmt_ms(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


def report(setup: Setup, variants: list[str], scenarios: list[str]) -> None:
    print()
    print(
        "Commands/request counts the Redis commands each variant sends itself "
        "(INFO commandstats deltas over wrk's completed requests): EVALSHA for the "
        "EDR example and the evalsha baseline, GET + INCR + EXPIRE for the naive "
        "baseline. Redis also counts the commands a script runs inside EVALSHA; "
        "'all cmds/req' includes those. "
        "'Redis µs/req' is the time Redis spent executing those top-level commands "
        "(commandstats usec; a script's includes its commands). "
        "Latency and commands are medians over the rounds; 'denied' is wrk's "
        "non-2xx share (429s). Ratios are median req/s against the no-limiter "
        "variant (off) of the same scenario. 'CPU µs/req' is the CPU time the "
        "server, redis-server and wrk each used during the run (/proc and "
        "getrusage), per completed request: where the two cores went."
        + (
            f" For cluster and cluster+cache, commands, Redis µs and redis CPU are "
            f"summed over the cluster's {CLUSTER_SIZE} primaries (their CPU includes the "
            f"cluster bus)."
            if CLUSTER_VARIANTS & set(variants) else ""
        )
    )
    for scenario in scenarios:
        print()
        print(f"### {scenario} (TELEMETRY_RATE={SCENARIO_RATE[scenario]})")
        print()
        print(
            "| variant | median req/s | min–max req/s | p50 | p99 "
            "| commands/request | all cmds/req | Redis µs/req | denied "
            "| CPU µs/req server / redis / wrk | ratio vs no-limiter |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        baseline = None
        if "off" in variants:
            baseline = statistics.median(r.rps for r in setup.runs[(scenario, "off")])
        for variant in variants:
            runs = setup.runs[(scenario, variant)]
            rps = [r.rps for r in runs]
            median_rps = statistics.median(rps)
            per_request = statistics.median(r.commands / max(r.requests, 1) for r in runs)
            all_per_request = statistics.median(
                r.all_commands / max(r.requests, 1) for r in runs
            )
            redis_usec = statistics.median(r.redis_usec / max(r.requests, 1) for r in runs)
            denied = statistics.median(r.non_2xx / max(r.requests, 1) for r in runs)
            ratio = f"{median_rps / baseline:.2f}" if baseline else "–"
            cpu = " / ".join(
                f"{statistics.median(getattr(r, part) * 1e6 / max(r.requests, 1) for r in runs):.1f}"
                for part in ("cpu_server", "cpu_redis", "cpu_wrk")
            )
            print(
                f"| {variant} | {median_rps:,.0f} | {min(rps):,.0f}–{max(rps):,.0f} "
                f"| {fmt_ms(statistics.median(r.p50_ms for r in runs))} "
                f"| {fmt_ms(statistics.median(r.p99_ms for r in runs))} "
                f"| {per_request:.3f} | {all_per_request:.3f} | {redis_usec:.1f} "
                f"| {denied:.1%} | {cpu} | {ratio} |"
            )
        errors = [
            f"{variant}: {r.socket_errors}"
            for variant in variants
            for r in setup.runs[(scenario, variant)]
            if r.socket_errors
        ]
        if errors:
            print()
            print("Socket errors: " + "; ".join(errors))
    compare_pairs(setup, variants, scenarios)


# Variants compared pairwise after the tables: (variant, against, title).
PAIRS = [
    ("cluster", "redis", "Redis Cluster against one Redis server"),
    ("cluster+cache", "redis+cache", "Redis Cluster against one Redis server, block cache on"),
    ("redis", "redis-no-metrics", "Metrics recorder installed against none"),
    ("redis", "evalsha", "Redis store against the minimal single-EVALSHA middleware"),
    ("lease", "memory", "Lease mode against the memory store"),
    ("lease", "redis", "Lease mode against the Redis store asked for every request"),
    ("lease-2", "memory", "Lease mode on two app servers against the memory store on one"),
]


def compare_pairs(setup: Setup, variants: list[str], scenarios: list[str]) -> None:
    """One line per scenario and pair measured: the server's CPU per request
    and req/s of a variant against another, each the median over the rounds
    (as in the tables)."""

    def medians(scenario: str, variant: str) -> tuple[float, float]:
        runs = setup.runs[(scenario, variant)]
        cpu = statistics.median(r.cpu_server * 1e6 / max(r.requests, 1) for r in runs)
        return cpu, statistics.median(r.rps for r in runs)

    for variant, against, title in PAIRS:
        if variant not in variants or against not in variants:
            continue
        print()
        print(f"{title}: the app server's CPU µs per request and req/s, medians over the rounds.")
        print()
        for scenario in scenarios:
            cpu, rps = medians(scenario, variant)
            base_cpu, base_rps = medians(scenario, against)
            print(
                f"- {scenario}: {variant} vs {against}, server CPU per request: "
                f"{cpu / base_cpu:.2f} × ({cpu:.1f} vs {base_cpu:.1f} µs); throughput: "
                f"{rps / base_rps:.2f} × ({rps:,.0f} vs {base_rps:,.0f} req/s)"
            )


# ------------------------------------------------------------------ main


def main() -> None:
    duration = env_int("DURATION", 10)
    rounds = env_int("ROUNDS", 3)
    connections = env_int("CONNECTIONS", 64)
    threads = env_int("THREADS", 1)
    variants = env_list("VARIANTS", ALL_VARIANTS)
    scenarios = env_list("SCENARIOS", ALL_SCENARIOS)
    redis_binary = os.environ.get("REDIS_SERVER", "").strip() or "redis-server"
    if not shutil.which(redis_binary):
        sys.exit(f"loadbench: {redis_binary} not found (Debian: apt-get install redis-server)")
    redis_cli = os.environ.get("REDIS_CLI", "").strip() or "redis-cli"
    if CLUSTER_VARIANTS & set(variants) and not shutil.which(redis_cli):
        sys.exit(f"loadbench: {redis_cli} not found (Debian: apt-get install redis-tools)")

    settings = (
        f"DURATION={duration} ROUNDS={rounds} CONNECTIONS={connections} THREADS={threads} "
        f"VARIANTS={','.join(variants)} SCENARIOS={','.join(scenarios)}"
    )
    print(f"$ {settings} python3 scripts/loadbench.py")
    print(
        f"$ wrk -t{threads} -c{connections} -d{duration}s --latency "
        f"-s scripts/wrk/<scenario>.lua http://127.0.0.1:<port>{TELEMETRY_PATH}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs; load average at start {loadavg()}; "
        f"every run: QUEUE_URL=off, RUST_LOG=warn, a fresh server, Redis flushed"
    )
    sys.stdout.flush()

    examples = build()
    wrk = ensure_wrk()
    # SIGTERM stops our servers too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="loadbench-") as tmp:
        workdir = Path(tmp)
        servers: list[Server] = []
        try:
            redis = start_redis(redis_binary, workdir, servers)
            cluster = []
            if CLUSTER_VARIANTS & set(variants):
                cluster = start_cluster(redis_binary, redis_cli, workdir, servers)
            setup = Setup(
                examples=examples, wrk=wrk, redis=redis, cluster=cluster,
                duration=duration, connections=connections, threads=threads,
                workdir=workdir,
            )
            log(f"redis-server on 127.0.0.1:{redis.port}; {rounds} round(s)")
            if cluster:
                log(
                    "Redis Cluster on "
                    + ", ".join(f"127.0.0.1:{node.port}" for node in cluster)
                    + ": cluster_state:ok"
                )
            for round_index in range(rounds):
                # Rotated, so that no variant always runs first or last.
                shift = round_index % len(variants)
                order = variants[shift:] + variants[:shift]
                for scenario in scenarios:
                    for variant in order:
                        run = run_once(setup, variant, scenario)
                        setup.runs.setdefault((scenario, variant), []).append(run)
                        log(
                            f"round {round_index + 1}/{rounds} {scenario:7} {variant:13} "
                            f"{run.rps:10,.0f} req/s  p50 {fmt_ms(run.p50_ms):>9}  "
                            f"p99 {fmt_ms(run.p99_ms):>9}  "
                            f"cmds/req {run.commands / max(run.requests, 1):.3f}  "
                            f"denied {run.non_2xx / max(run.requests, 1):6.1%}  "
                            f"load {run.load:.2f}"
                        )
        finally:
            stop_servers(servers)
    loads = [run.load for runs in setup.runs.values() for run in runs]
    print(
        f"\nload average (1 min) at the runs' starts: {min(loads):.2f}–{max(loads):.2f}; "
        f"at the end: {loadavg()}"
    )
    report(setup, variants, scenarios)


if __name__ == "__main__":
    main()
