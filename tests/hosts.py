"""Test hosts on one machine: Linux network namespaces wired to one bridge, each with its own address, hostname
(a UTS namespace), /etc/hosts and disk. Shared by the tests that run the jobs across hosts (test_multihost.py)
and on Flink and Spark clusters (test_flink.py, test_spark.py).

A namespaced host runs in a private mount namespace: its own folder is mounted over /tmp and a tmpfs over the
launcher's home (its caches and credentials), so no launcher-local path (pytest's folders, the jobs' scratch,
the launcher's caches) exists there. What the host must still see, wherever it lives (under /tmp, under the
home folder, in a path with a space), is mounted back at its own path: the Python interpreter (a host's
"image"), and for hosts that are not `isolated` the checkout and its venv as well. An `isolated` host (a
worker) also gets a tmpfs over the checkout, and the project venv's site-packages mounted read-only at
`DEPENDENCIES`, in place of the dependencies a worker image holds.

Also what the tests of servers on this one machine share: `free_port`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_S = 120
DEPENDENCIES = "/tmp/python-deps"  # on an isolated host: the project venv's site-packages, read-only

# Run by `sh -c` inside a host's own UTS and mount namespaces: $1 hostname, $2 the host's folder (its /tmp),
# $3 the launcher's home, $4 the checkout to hide ('' to leave it), $5 the dependencies to mount at
# DEPENDENCIES ('' for none), $6 the paths to keep visible (one a line, no path inside another); then the
# command. The kept paths are bind-mounted into the host's folder before /tmp and the home are covered (they
# may live under either), and mounted back at their own paths afterwards.
_ENTER_HOST = r"""
set -e
name=$1 disk=$2 home=$3 hide=$4 deps=$5 keep=$6
shift 6
hostname "$name"
IFS='
'
held="$disk/.held"
mkdir -p "$held"
n=0
for path in $keep; do
  n=$((n + 1)); mkdir -p "$held/$n"; mount --bind "$path" "$held/$n"
done
if [ -n "$deps" ]; then mkdir -p "$held/deps"; mount --bind "$deps" "$held/deps"; fi
mount --rbind "$disk" /tmp
mount --bind /tmp/hosts /etc/hosts
mount -t tmpfs tmpfs "$home"
n=0
for path in $keep; do
  n=$((n + 1)); mkdir -p "$path"; mount --bind "/tmp/.held/$n" "$path"; umount "/tmp/.held/$n"
done
if [ -n "$deps" ]; then
  mkdir -p "$DEPENDENCIES"
  mount --bind /tmp/.held/deps "$DEPENDENCIES" && mount -o remount,bind,ro "$DEPENDENCIES"
  umount /tmp/.held/deps
fi
if [ -n "$hide" ] && [ -d "$hide" ]; then mount -t tmpfs -o ro tmpfs "$hide"; fi
unset IFS
mkdir -p /tmp/work /tmp/home
cd /tmp/work
exec "$@"
""".replace("$DEPENDENCIES", DEPENDENCIES)


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _subnet() -> str:
    """A 10.x.y /24 that no route of this machine uses."""
    routes = _ip("-4", "route")
    for n in range(os.getpid() % 200, os.getpid() % 200 + 50):
        subnet = f"10.{200 + n % 50}.{n}"
        if f"{subnet}." not in routes:
            return subnet
    raise OSError("no free 10.x.y.0/24 subnet")


def namespaces_or_skip(tag: str) -> None:
    """Skip the calling test unless this process can make hosts: root, iproute2, unshare, mounts."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("ip (iproute2) and unshare (util-linux) are needed to make the hosts")
    probe = f"{tag}-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot make network namespaces here: ip netns add: {done.stderr.strip()}")
    try:
        done = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "--mount", "--", "sh", "-c",
                               "hostname probe && mount -t tmpfs tmpfs /tmp"], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot give a host its own hostname and mounts here: {done.stderr.strip()}")
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class Network:
    """Network namespaces wired to one bridge (in a namespace of its own), and the machine's own namespace wired
    to it too. `close()` ends the processes left in the namespaces and removes every namespace and link made."""

    def __init__(self, tag: str):
        self.tag = tag
        self.subnet = ""
        self.switch = f"{tag}-switch"
        self._namespaces: list[str] = []
        self._links: list[str] = []  # veth ends made in the machine's namespace, wherever they went

    def add_switch(self) -> None:
        self.subnet = _subnet()
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "bridge", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "bridge", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def attach(self, number: int, netns: str | None) -> str:
        """Wire a new namespace `netns` (None: the machine's own) to the bridge as SUBNET.number; its address."""
        address, end, port = f"{self.subnet}.{number}", f"{self.tag}h{number}", f"{self.tag}p{number}"
        _ip("link", "add", end, "type", "veth", "peer", "name", port)
        self._links += [end, port]
        _ip("link", "set", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "bridge", "up")
        inside = []
        if netns is not None:
            self._add_namespace(netns)
            _ip("link", "set", end, "netns", netns)
            inside = ["-n", netns]
            _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{address}/24", "dev", end)
        _ip(*inside, "link", "set", end, "up")
        return address

    def close(self) -> None:
        for netns in self._namespaces:
            for pid in subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for netns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        for link in self._links:  # those moved into a namespace went with it, though not always at once
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def kept_paths(isolated: bool, more: tuple[str, ...] = ()) -> list[str]:
    """What a host sees at the same path as the launcher: the interpreter, unless `isolated` the venv and the
    checkout, and `more`; outermost first, none inside another."""
    wanted = [sys.base_prefix, *more] if isolated else [sys.base_prefix, sys.prefix, str(REPO), *more]
    paths = sorted({os.path.realpath(p) for p in wanted}, key=len)
    kept: list[str] = []
    for path in paths:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    for path in kept:
        if "\n" in path:
            raise OSError(f"cannot keep a path with a newline visible on a test host: {path!r}")
    return kept


@dataclasses.dataclass
class Host:
    """One machine of the test. `netns` None is the machine's own namespace (the launcher), whose files are
    the checkout and `disk`; a namespaced host sees `disk` as /tmp, and with `isolated` not the checkout."""

    name: str
    address: str
    disk: Path
    netns: str | None = None
    isolated: bool = False
    processes: list = dataclasses.field(default_factory=list)
    keep: tuple[str, ...] = ()  # more paths seen as on the launcher (an engine's install folder)

    def path(self, name: str) -> str:
        """`name` in this host's folder, as the host sees it."""
        return f"/tmp/{name}" if self.netns else str(self.disk / name)

    def command(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return argv
        hide, deps = (str(REPO), sysconfig.get_path("purelib")) if self.isolated else ("", "")
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount", "--", "sh", "-c", _ENTER_HOST,
                "enter-host", self.name, str(self.disk), os.path.expanduser("~"), hide, deps,
                "\n".join(kept_paths(self.isolated, self.keep)), *argv]

    def start(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        """A long-running program on this host, its output in `log` in the host's folder."""
        with open(self.disk / log, "wb") as out:
            process = subprocess.Popen(self.command(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=REPO if self.netns is None else None, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO if self.netns is None else None)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            try:  # the programs' own children (SDK workers) too
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def log(self, name: str) -> str:
        return (self.disk / name).read_text(errors="replace")


def base_env() -> dict[str, str]:
    """This process's environment without proxies or paths into the checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    """A TCP port free on this machine's loopback now (for a local server a test starts: the GCS emulator, a
    job service, a stand-in job server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(address: str, port: int, process: subprocess.Popen, host: Host, log: str) -> None:
    """Until `process` on `host` listens on address:port; fails the test if it exits or takes over START_S."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{log} on {host.name} exited with {process.returncode}: {host.log(log)[-3000:]}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{log} on {host.name} did not listen on {address}:{port} within {START_S}s: {host.log(log)[-3000:]}")


def premise_failure(host: Host, env: dict[str, str]) -> str | None:
    """Why `host` (not isolated) cannot run the product as the launcher does, or None: it must see this
    interpreter, the venv's packages and the checkout at their own paths, and not the launcher's /tmp."""
    probe = ("import beam_jobs, os, sys; print(sys.prefix); print(os.path.dirname(os.path.dirname("
             "beam_jobs.__file__)))")
    try:
        done = host.run([sys.executable, "-c", probe], env, timeout=START_S)
    except subprocess.TimeoutExpired:
        return f"{host.name} did not run {sys.executable} within {START_S}s"
    if done.returncode:
        return (f"{host.name} cannot run the product from {REPO} with {sys.executable} "
                f"(exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}")
    seen = done.stdout.split("\n")[:2]
    if seen != [sys.prefix, str(REPO)]:
        return f"{host.name} runs another interpreter or checkout than the launcher: {seen}"
    return None


# Flink -------------------------------------------------------------------------------------------------------------
# A standalone Flink session cluster on test hosts, from the distribution `make flink` installs (tools/flink.py).
FLINK_REST_PORT, FLINK_RPC_PORT = 8081, 6123
FLINK_MEMORY = "1024m"  # the JobManager's whole process: small, on a machine of 2 cores
FLINK_TASKMANAGER_MEMORY = "1280m"  # a TaskManager's: its sorters' managed memory and the network buffers


def java_engine_env(host: Host, conf: dict[str, str], name: str) -> dict[str, str]:
    """Write `conf` (flattened keys) as `host`'s Flink configuration, beside the stock log4j files, under
    `name`/ in its folder; the environment that runs Flink's scripts with it, logs in `name`/log."""
    from tools.flink import flink_home

    folder = host.disk / name
    shutil.copytree(flink_home() / "conf", folder / "conf", dirs_exist_ok=True)
    (folder / "conf" / "config.yaml").write_text("".join(f"{key}: {value}\n" for key, value in conf.items()))
    (folder / "log").mkdir(exist_ok=True)
    env = base_env()
    env.update(FLINK_CONF_DIR=host.path(f"{name}/conf"), FLINK_LOG_DIR=host.path(f"{name}/log"),
               FLINK_HOME=str(flink_home()))
    if host.netns:
        env["HOME"] = "/tmp/home"
    return env


def flink_conf(jobmanager: Host, host: Host, slots: int) -> dict[str, str]:
    """A session cluster's configuration as `host` (the JobManager or a TaskManager) sees it: every service on
    the host's own address, small memory, dead TaskManagers noticed within seconds."""
    return {
        "jobmanager.rpc.address": jobmanager.address, "jobmanager.rpc.port": str(FLINK_RPC_PORT),
        "jobmanager.bind-host": "0.0.0.0", "jobmanager.memory.process.size": FLINK_MEMORY,
        "rest.address": jobmanager.address, "rest.bind-address": "0.0.0.0", "rest.port": str(FLINK_REST_PORT),
        "taskmanager.host": host.address, "taskmanager.bind-host": "0.0.0.0",
        "taskmanager.numberOfTaskSlots": str(slots), "taskmanager.memory.process.size": FLINK_TASKMANAGER_MEMORY,
        "taskmanager.memory.managed.fraction": "0.2",  # the batch sorters' (GroupByKey); 0.05 was too little
        # Beam's batch jobs run every stage at once, each blocking shuffle asking for sort-shuffle buffers
        # (512 by default): more network memory, fewer buffers a shuffle.
        "taskmanager.memory.network.min": "128m", "taskmanager.memory.network.max": "128m",
        "taskmanager.network.sort-shuffle.min-buffers": "64",
        "cluster.evenly-spread-out-slots": "true",  # parallel subtasks on different TaskManagers
        "heartbeat.interval": "2000", "heartbeat.timeout": "10000",
        "parallelism.default": "2",
    }


def start_flink(host: Host, role: str, jobmanager: Host, slots: int = 2):
    """Flink's `role` ("jobmanager" or "taskmanager") in the foreground on `host`, its output in
    `flink-<role>.log` in the host's folder."""
    from tools.flink import flink_home

    env = java_engine_env(host, flink_conf(jobmanager, host, slots), f"flink-{role}")
    return host.start([str(flink_home() / "bin" / f"{role}.sh"), "start-foreground"], env, f"flink-{role}.log")


def http_json(url: str):
    """GET `url` straight (the hosts are reached directly, never through a proxy), its JSON decoded."""
    import json
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return json.load(response)


def flink_rest(jobmanager: Host, path: str):
    """GET http://<jobmanager>:8081/<path> of Flink's REST API, decoded."""
    return http_json(f"http://{jobmanager.address}:{FLINK_REST_PORT}/{path.lstrip('/')}")


def wait_for_taskmanagers(jobmanager: Host, processes: list, count: int) -> list[dict]:
    """Until `count` TaskManagers have registered with the JobManager on `jobmanager`; their REST entries. Fails
    the test if one of `processes` (host, process, log) exits or it takes over START_S."""
    deadline = time.monotonic() + START_S
    while True:
        for host, process, log in processes:
            if process.poll() is not None:
                pytest.fail(f"{log} on {host.name} exited with {process.returncode}: {host.log(log)[-3000:]}")
        try:
            found = flink_rest(jobmanager, "taskmanagers")["taskmanagers"]
            if len(found) >= count:
                return found
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{count} TaskManagers did not register within {START_S}s: "
                        + "\n".join(f"{h.name} {log}: {h.log(log)[-2000:]}" for h, _, log in processes))
        time.sleep(0.5)


# Spark: a standalone master and workers, Spark's own JVMs from the folder `make spark` installs (tools/spark.py),
# each on a host of its own.

SPARK_PORT, SPARK_UI_PORT, SPARK_WORKER_UI_PORT = 7077, 8080, 8081


def spark_env(host: Host, env: dict[str, str]) -> dict[str, str]:
    """`env` plus what Spark's JVMs run with on `host`: the host's address as theirs (what other hosts reach),
    their files in the host's folder, small heaps."""
    from tools.spark import spark_home

    return dict(env, SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=host.address, SPARK_LOCAL_HOSTNAME=host.address,
                SPARK_NO_DAEMONIZE="1", SPARK_DAEMON_MEMORY="192m", SPARK_WORKER_DIR=host.path("spark-work"),
                SPARK_LOCAL_DIRS=host.path("spark-local"), SPARK_LOG_DIR=host.path("spark-logs"))


def _spark_class(*args: str) -> list[str]:
    from tools.spark import spark_home

    return [str(spark_home() / "bin" / "spark-class"), *args]


def spark_state(host: Host, port: int = SPARK_UI_PORT) -> dict:
    """What a Spark master (or, on SPARK_WORKER_UI_PORT, a worker) says of itself: its web UI's /json/."""
    return http_json(f"http://{host.address}:{port}/json/")


def start_spark(master: Host, workers: list[Host], env: dict[str, str], cores: int = 1,
                memory: str = "640m") -> str:
    """A master on `master` and a worker on each of `workers` (`cores` and `memory` each to give executors),
    started and waited for until every worker has registered ALIVE; the master's URL."""
    process = master.start(_spark_class("org.apache.spark.deploy.master.Master", "--host", master.address,
                                        "--port", str(SPARK_PORT), "--webui-port", str(SPARK_UI_PORT)),
                           spark_env(master, env), "spark-master.log")
    wait_for_port(master.address, SPARK_UI_PORT, process, master, "spark-master.log")
    url = f"spark://{master.address}:{SPARK_PORT}"
    started = [(host, host.start(_spark_class("org.apache.spark.deploy.worker.Worker", "--host", host.address,
                                              "--cores", str(cores), "--memory", memory,
                                              "--webui-port", str(SPARK_WORKER_UI_PORT), url),
                                 spark_env(host, env), "spark-worker.log"))
               for host in workers]
    deadline = time.monotonic() + START_S
    while True:
        for host, worker in [(master, process), *started]:
            log = "spark-master.log" if host is master else "spark-worker.log"
            if worker.poll() is not None:
                pytest.fail(f"{log} on {host.name} exited with {worker.returncode}: {host.log(log)[-3000:]}")
        try:
            alive = {w["host"] for w in spark_state(master)["workers"] if w["state"] == "ALIVE"}
        except (OSError, ValueError):  # the UI listens before it serves /json/ (an HTML page until then)
            alive = set()
        if alive >= {h.address for h in workers}:
            return url
        if time.monotonic() > deadline:
            pytest.fail(f"Spark workers {sorted(h.address for h in workers)} not all ALIVE at {url} within "
                        f"{START_S}s (alive: {sorted(alive)}): {workers[0].log('spark-worker.log')[-3000:]}")
        time.sleep(0.2)
