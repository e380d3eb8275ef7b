"""What the speed-up over the reference is made of, and what a faster embedder would take: frames/s of the
reference's per-frame `predict()`, of the same network called once per frame without `predict()`, and of
the product's `FrameEmbedder` at several batch sizes, with and without XLA (`jit_compile=True`), all in
this process on the same frames. Not part of `make bench`; quoted in bench/ANALYSIS.md.

    python -m bench.diagnose_embedder [--frames 192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

from bench import throughput
from bench.data import clip_set
from bench.harness import WORK_DIR, load_average, log, median


def rate(call, frames: int, repeats: int) -> float:
    """Median frames/s of `call()` (which handles `frames` frames) over `repeats` timed calls after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return frames / median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose_embedder")
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--per-frame", type=int, default=32, help="frames for the one-call-per-frame measures")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    frames = throughput.load_frames(clip_set(16, 21), args.frames)
    few = frames[: args.per_frame]
    results = {"load_start": load_average(), "frames": args.frames, "per_frame_frames": args.per_frame}

    reference = throughput.ReferenceExtractor()
    results["reference_predict_per_frame"] = rate(
        lambda: [reference.model.predict(f[None], verbose=0) for f in few], len(few), args.repeats)
    # As the keras-io example writes it: predict's default verbosity prints a progress bar every call (to
    # /dev/null here, which is cheaper than a terminal).
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        results["reference_predict_per_frame_verbose_default"] = rate(
            lambda: [reference.model.predict(f[None]) for f in few], len(few), args.repeats)
    direct = tf.function(lambda x: reference.model(x, training=False), reduce_retracing=True)
    results["same_network_tf_function_per_frame"] = rate(
        lambda: [direct(tf.constant(f[None])).numpy() for f in few], len(few), args.repeats)
    log(f"reference {results['reference_predict_per_frame']:.1f} frames/s "
        f"({results['reference_predict_per_frame_verbose_default']:.1f} with its progress bars); the same network "
        "without predict(), "
        f"one frame a call: {results['same_network_tf_function_per_frame']:.1f} frames/s")

    embedder = throughput.BareModel(32).embedder
    for batch in (1, 8, 16, 32, 64):
        batches = [frames[i : i + batch] for i in range(0, len(frames), batch)]
        results[f"frame_embedder_batch_{batch}"] = rate(lambda: [embedder(b) for b in batches], len(frames),
                                                         args.repeats)
        log(f"FrameEmbedder batch {batch}: {results[f'frame_embedder_batch_{batch}']:.1f} frames/s")

    model = embedder._model
    preprocess = keras.applications.densenet.preprocess_input
    xla = tf.function(lambda x: model(preprocess(tf.cast(x, tf.float32)), training=False), jit_compile=True)
    for batch in (32,):
        batches = [tf.constant(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
        count = sum(len(b) for b in batches)
        results[f"xla_batch_{batch}"] = rate(lambda: [xla(b).numpy() for b in batches], count, args.repeats)
        log(f"XLA batch {batch}: {results[f'xla_batch_{batch}']:.1f} frames/s")
    results["load_end"] = load_average()
    (WORK_DIR / "diagnose_embedder.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
