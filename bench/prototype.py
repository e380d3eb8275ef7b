"""A/B a change to the product before proposing it: the featurize job from this checkout against the same
job from patched copies of the packages (beam_jobs/, model/, tfrecords_schema/), taking turns, on the same
clips. A --variant is NAME=DIFF[+DIFF...] (unified diffs applied in order to a fresh copy under
bench/_work/variants/NAME) or NAME=DIR (a copy made by hand). Prints and writes (bench/_work/prototype.json)
steady and whole-job frames/s, time to the first record, peak RSS and PSS per run and their medians.

    python -m bench.prototype --per-class 16 --rounds 3 --variant ahead=bench/proposals/decode-one-video-ahead.diff

(The ANALYSIS.md figures were taken before commit 6f9cd5a applied the other proposal, float32 records built
from lists, to the product; its diff is in that commit.)

Not part of `make bench`; the figures it produced are quoted in bench/ANALYSIS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench import throughput
from bench.data import clip_set
from bench.harness import REPO, WORK_DIR, load_average, log, median


PACKAGES = ("beam_jobs", "model", "tfrecords_schema")


def variant_root(name: str, spec: str) -> Path:
    """The root of a patched copy: `spec` is a directory, or diffs joined by '+' applied to a fresh copy."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    root = WORK_DIR / "variants" / name
    shutil.rmtree(root, ignore_errors=True)
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for diff in spec.split("+"):
        subprocess.run(["patch", "-p1", "-s", "-d", str(root), "-i", str(Path(diff).resolve())], check=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prototype")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=DIFF[+DIFF]|NAME=DIR",
                        help="a name and the diffs to apply to a copy of the packages, or a patched copy's root "
                             "(repeatable)")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    clips = clip_set(args.per_class, args.seed)
    variants = {"current": REPO}
    for text in args.variant:
        name, _, spec = text.partition("=")
        variants[name] = variant_root(name, spec)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, root in variants.items():
            run = throughput.featurize(f"prototype-{name}-r{r}", clips, source_root=root)
            runs[name].append(run.summary())
            steady = run.steady_state()["frames_per_s"]
            log(f"{name} round {r + 1}: steady {steady:.1f} frames/s, whole {run.whole_job_frames_per_s:.1f} "
                f"frames/s, first record {run.startup_s():.1f}s, RSS {run.job.peak_rss_mb:.0f} MB, "
                f"PSS {run.job.peak_pss_mb:.0f} MB")
    summary = {
        name: {
            "steady_frames_per_s": median(x["steady_state"]["frames_per_s"] for x in each),
            "steady_cpu_s_per_frame": median(x["steady_state"]["cpu_s_per_frame"] for x in each),
            "whole_job_frames_per_s": median(x["whole_job_frames_per_s"] for x in each),
            "wall_s": median(x["wall_s"] for x in each),
            "first_record_after_s": median(x["first_record_after_s"] for x in each),
            "peak_rss_mb": median(x["peak_rss_mb"] for x in each),
            "peak_pss_mb": median(x["peak_pss_mb"] for x in each),
        }
        for name, each in runs.items()
    }
    result = {"clips": str(clips), "rounds": args.rounds, "load_end": load_average(), "summary": summary, "runs": runs}
    (WORK_DIR / "prototype.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
