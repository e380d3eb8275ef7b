"""What the benchmarks share: running a job in a subprocess while sampling its whole process tree (RSS, PSS,
CPU time, and a progress probe), medians, a description of the machine, and the cache of scratch data
(generated clips, featurized records, finished training runs) under bench/_work/.

A cache entry is keyed by its parameters (and `CACHE_VERSION`), not by the code: others edit this tree all
day, and most edits do not change what a clip, a record or a trained model holds. Instead each entry keeps
its provenance (when, at which commit, a digest of each source that decides its content), and
`provenance()` says which of those sources differ now; the results name them, and `--refresh` rebuilds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
WORK_DIR = REPO / "bench" / "_work"
LOG_DIR = WORK_DIR / "logs"
CACHE_DIR = WORK_DIR / "cache"
COMPLETE_MARK = ".complete"
PACKAGES = ("tensorflow", "keras", "apache-beam", "opencv-python-headless", "numpy", "protobuf", "openvino", "nncf")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

CACHE_VERSION = 1
PRODUCT_DIRS = ("beam_jobs", "common", "model", "tfrecords_schema", "tools", "video")


def sources(*patterns: str) -> tuple[str, ...]:
    """The repository files matching `patterns` (globs from the repository root), sorted; a pattern that matches
    nothing is kept as written, so that its digest reads "missing" rather than the file being forgotten."""
    found: set[str] = set()
    for pattern in patterns:
        matches = [str(p.relative_to(REPO)) for p in REPO.glob(pattern) if p.is_file()]
        found.update(matches or [pattern])
    return tuple(sorted(found))


# The sources that decide what each kind of cache entry holds.
CLIP_SOURCES = sources("tools/sample_videos.py")
FEATURIZE_SOURCES = sources(
    "video/*.py", "beam_jobs/decode.py", "beam_jobs/embed.py", "beam_jobs/records.py", "beam_jobs/matching.py",
    "beam_jobs/featurize.py", "beam_jobs/calibration.py", "model/backbone.py", "model/engines.py",
    "tfrecords_schema/*.py", "common/*.py",
)
TRAIN_SOURCES = sources(
    "model/config.py", "model/data.py", "model/datasets.py", "model/callbacks.py", "model/averaging.py", "model/loop.py",
    "model/train.py", "model/classifier.py", "tfrecords_schema/*.py",
)
REFRESH = {"enabled": False}  # set by `python -m bench.run --refresh`: rebuild every cache entry used
_REFRESHED: set[Path] = set()  # entries rebuilt in this process


def median(values: Iterable[float | None]) -> float:
    """Median of the values that are neither None nor NaN; NaN if there are none."""
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- The machine ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo, with family/model/stepping when the name is generic."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or "unknown"
    name = fields.get("model name", "unknown")
    detail = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    return f"{name} ({detail})" if detail else name


def cpu_flags() -> list[str]:
    """The /proc/cpuinfo flags that decide DenseNet121's speed: AVX-512, VNNI, BF16, AMX, FP16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma"))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_state() -> dict:
    """HEAD and whether the product files differ from it (others edit this tree while we measure)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""
    changed = git("status", "--porcelain", "--", *PRODUCT_DIRS).splitlines()
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_product_files": sorted(
        line[3:] for line in changed)}


def machine() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git_state(),
    }


# --- Jobs in a subprocess, sampled ---------------------------------------------------------------------


@dataclasses.dataclass
class JobRun:
    """One finished subprocess: wall and CPU time of its whole tree, peak memory of its whole tree, and
    samples `(seconds since start, CPU seconds of the tree so far, probe value)`."""

    name: str
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    peak_processes: int
    samples: list[tuple[float, float, float]]
    log_path: str
    load_before: list[float]

    def check(self) -> "JobRun":
        if self.returncode != 0:
            tail = Path(self.log_path).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} failed (exit code {self.returncode}); log {self.log_path}:\n{tail}")
        return self


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _parent_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and of the children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (TensorFlow's libraries, mapped by parent and child) counted once
    across the processes that share them, so summing it over a tree does not double count."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def run_job(name: str, argv: Sequence[str], probe: Callable[[], float] | None = None,
            interval_s: float = 0.2, pss_every: int = 5) -> JobRun:
    """Run `argv` (from the repository root) to the end while a thread samples every `interval_s` the RSS
    and CPU time of every process in its tree (PSS every `pss_every` samples) and `probe()`. The final CPU
    time is the user + system time of the job and of every descendant it waited for (os.wait4)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    load = load_average()
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(list(argv), cwd=REPO, env=job_env(), stdout=log_file,
                                   stderr=subprocess.STDOUT)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        count = 0
        while not done.is_set():
            tree = process_tree(process.pid)
            peak["rss"] = max(peak["rss"], sum(_rss_kb(p) for p in tree))
            peak["processes"] = max(peak["processes"], len(tree))
            if count % pss_every == 0:
                peak["pss"] = max(peak["pss"], sum(_pss_kb(p) for p in tree))
            cpu = sum(_cpu_s(p) for p in tree)
            samples.append((time.monotonic() - started, cpu, probe() if probe is not None else 0.0))
            count += 1
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    samples.append((wall, cpu, probe() if probe is not None else 0.0))
    return JobRun(
        name=name, argv=list(argv), returncode=process.returncode, wall_s=wall,
        cpu_s=cpu, peak_rss_mb=peak["rss"] / 1024, peak_pss_mb=peak["pss"] / 1024,
        peak_processes=peak["processes"], samples=samples, log_path=str(log_path), load_before=load,
    )


_PROGRESS_LINE = re.compile(r"progress: .*?; (\d+) frames at [\d.]+ frames/s; (\d+) s$")


def progress_frames_per_s(log_path: str) -> float:
    """Frames/s between the first and the last progress line a job logged (beam_jobs.progress logs frames
    embedded and seconds since its start every 10 s): a steady rate that leaves start-up out. NaN with fewer
    than two lines."""
    points = []
    with open(log_path, errors="replace") as f:
        for line in f:
            if match := _PROGRESS_LINE.search(line.rstrip()):
                points.append((int(match.group(2)), int(match.group(1))))
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return float("nan")
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def tree_bytes(root: Path, containing: str = "") -> int:
    """Bytes of the regular files under `root` whose path (below `root`) contains `containing`; 0 while
    there are none."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if containing not in os.path.relpath(os.path.join(directory, name), root):
                continue
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


# --- The cache -----------------------------------------------------------------------------------------


def file_digest(path: str) -> str:
    try:
        return hashlib.sha256((REPO / path).read_bytes()).hexdigest()[:12]
    except FileNotFoundError:
        return "missing"


def cache_key(params: dict) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, params], sort_keys=True).encode()).hexdigest()[:12]


def cached(kind: str, params: dict, sources: Iterable[str], build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The cache entry `kind-<key of params>` under bench/_work/cache, built by `build(directory)` if missing
    (or if `--refresh`); its provenance (`sources` digests, commit, time) goes in its COMPLETE_MARK file.

    Returns (its directory, whether it was already there). An entry counts only once `build` returned."""
    directory = CACHE_DIR / f"{kind}-{cache_key(params)}"
    if (directory / COMPLETE_MARK).exists() and not (REFRESH["enabled"] and directory not in _REFRESHED):
        return directory, True
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    build(directory)
    made = {"params": params, "made_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_head": git_state()["head"],
            "sources": {p: file_digest(p) for p in sorted(set(sources))}}
    (directory / COMPLETE_MARK).write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")
    _REFRESHED.add(directory)
    return directory, False


def provenance(directory: Path) -> dict:
    """How a cache entry was made, and which of its sources have changed since (`changed_sources`)."""
    made = json.loads((directory / COMPLETE_MARK).read_text())
    made["changed_sources"] = sorted(p for p, digest in made["sources"].items() if file_digest(p) != digest)
    return made
