"""What a training step costs, without the trainer around it: the classifier at its reference size (20 x 1024
features, 6 classes) trained with `train_on_batch` on random batches of 16, with and without TensorFlow op
determinism (which model.train turns on), and the per-epoch checkpoint (`model.save` with the optimizer
state, as the trainer's `last.keras`). Wall and CPU seconds, in this process. Not part of `make bench`;
quoted in bench/ANALYSIS.md.

    python -m bench.diagnose_training [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose_training")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from bench.harness import load_average
    from model.classifier import ClassifierConfig, build_classifier, compile_classifier

    rng = np.random.default_rng(0)
    x = {"features": rng.standard_normal((16, 20, 1024)).astype("float32") * 0.03,
         "mask": np.ones((16, 20), bool)}
    y = rng.integers(0, 6, 16)
    results = {"load_start": load_average()}
    for determinism in (False, True):
        if determinism:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(0)
        model = compile_classifier(build_classifier(ClassifierConfig(num_classes=6)), 1e-3)
        model.train_on_batch(x, y)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        results[f"step_{'deterministic' if determinism else 'default'}"] = {
            "wall_s": (time.perf_counter() - wall) / args.steps, "cpu_s": (time.process_time() - cpu) / args.steps}
    results["weights"] = model.count_params()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "last.keras"
        wall, cpu = time.perf_counter(), time.process_time()
        model.save(path)
        results["checkpoint"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                                 "mb": path.stat().st_size / 2**20}
    results["load_end"] = load_average()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
