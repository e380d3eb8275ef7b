"""Where the featurize job's time goes: runs `beam_jobs.featurize.run()` in this process under cProfile and
prints seconds per stage (embedding, waiting for the decoder child, encoding records, writing them, start-up
pieces) next to the whole run. Not part of `make bench`; used to explain the figures in bench/ANALYSIS.md.

    python -m bench.profile_featurize CLIPS_DIR [--batch-size 32] [--top 30]

It imports `beam_jobs.featurize` at the top, as `python -m beam_jobs.featurize` does, so the decoder child
(which re-imports the launching module, see ANALYSIS.md) starts as it does for a user.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import time

from beam_jobs import featurize  # noqa: F401  (imported at the top like the real entry point)
from bench.harness import WORK_DIR

# (label, file suffix, function name): cumulative time of these calls.
STAGES = (
    ("DenseNet121 calls (FrameEmbedder.__call__)", "model/backbone.py", "__call__"),
    ("DenseNet121 build + first trace (EmbedFramesDoFn.setup)", "beam_jobs/transforms.py", "setup"),
    ("decode: waiting for the decoder child (IsolatedDecoder.decode)", "beam_jobs/decoder.py", "decode"),
    ("  of which starting the child (IsolatedDecoder._start)", "beam_jobs/decoder.py", "_start"),
    ("fingerprint (sha256 of each file)", "beam_jobs/transforms.py", "_local_copy"),
    ("encode records (encode_video)", "beam_jobs/transforms.py", "encode_video"),
    ("write records (TFRecord sink)", "apache_beam/io/tfrecordio.py", "write_record"),
    ("match videos (launcher)", "beam_jobs/matching.py", "match_videos"),
)


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    found = {label: 0.0 for label, _, _ in STAGES}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for label, suffix, name in STAGES:
            if filename.endswith(suffix) and function == name:
                found[label] = max(found[label], cumulative)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_featurize")
    parser.add_argument("clips")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions by cumulative time")
    args = parser.parse_args(argv)
    output = WORK_DIR / "runs" / "profile"
    shutil.rmtree(output, ignore_errors=True)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    featurize.run(["--runner", "DirectRunner", "--input", args.clips, "--output", str(output), "--weights", "random",
                   "--batch-size", str(args.batch_size)])
    profile.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profile)
    print(f"\nwhole run() {wall:.1f} s (after imports)")
    for label, seconds in stage_seconds(stats).items():
        print(f"  {seconds:7.1f} s  {100 * seconds / wall:5.1f}%  {label}")
    if args.top:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.top)
        print(text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
