"""The README's picture of a review task in Label Studio: a small labelling run made here, its least confident
task opened in a real Label Studio (`make labelstudio`), photographed by headless chromium (`make browser`).

    python -m tools.review_screenshot docs/images/review_task.png

The run: H.264 clips of solid colours train a colour classifier in a few epochs (featurize, model.train), and
`predict --segments 1 --review` labels three clips, two of them with pieces of several colours: the least
confident task shows the model's label as the pre-selected choice and the events as timeline predictions.
`--keep DIR` keeps the run and the server's data (and reuses a run kept there before).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tools.label_studio import PASSWORD, USER, LabelStudioServer, installed
from tools.report_screenshot import BROWSERS, Browser

COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}  # RGB
PIECES = (("red", 50), ("green", 25), ("blue", 50))  # frames at 25 fps: 2 s, 1 s, 2 s
FPS, SIZE = 25, 32

LOGIN = """(() => {
  document.querySelector('input[name=email]').value = %s;
  document.querySelector('input[name=password]').value = %s;
  document.querySelector('form').submit();
})()"""
# Resolves once the labelling view has drawn the task's video (Label Studio paints it on a canvas, with a
# spinner until the video has loaded) and the choices.
READY = """new Promise((resolve, reject) => {
  const started = Date.now();
  (function check() {
    const video = document.querySelector('video');
    const canvas = document.querySelector('[class*="video-canvas"] canvas');
    if (video && video.readyState >= 2 && canvas && !document.querySelector('[class*="video-canvas__loading"]')
        && document.querySelector('input[type=radio]')) {
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(true)));
    } else if (Date.now() - started > 90000) {
      reject(new Error('the labelling view did not show the video'));
    } else {
      setTimeout(check, 200);
    }
  })();
})"""


def write_clip(path: Path, pieces, seed: int) -> None:
    """Pieces of solid colour with noise, H.264 in MP4 (what a browser plays), 160x120 at FPS."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for colour, count in pieces:
            for _ in range(count):
                frame = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_run(root: Path) -> Path:
    """Train a colour classifier and label the pieces clip with --review; returns the labelling output."""
    from beam_jobs import featurize, predict
    from model import train

    train_dir, review_dir = root / "train", root / "videos"
    for i in range(4):
        for colour in COLOURS:
            (train_dir / colour).mkdir(parents=True, exist_ok=True)
            write_clip(train_dir / colour / f"{colour}_{i}.mp4", [(colour, 20)], seed=10 * i + len(colour))
    review_dir.mkdir(parents=True, exist_ok=True)
    write_clip(review_dir / "pieces.mp4", PIECES, seed=7)
    write_clip(review_dir / "red_then_blue.mp4", [("red", 40), ("blue", 40)], seed=8)
    write_clip(review_dir / "green.mp4", [("green", 50)], seed=9)
    frames = ["--weights", "random", "--image-size", str(SIZE), "--max-seq-length", "4", "--runner", "DirectRunner"]
    featurize.run(["--input", str(train_dir), "--output", str(root / "features"), *frames])
    shutil.copytree(root / "features", root / "validation")
    train.run(["--train", str(root / "features"), "--validation", str(root / "validation"), "--output",
               str(root / "model"), "--epochs", "40", "--patience", "0", "--start-from-epoch", "0",
               "--learning-rate", "0.01", "--ema-momentum", "0", "--batch-size", "12", "--seed", "1"])
    predict.run(["--input", str(review_dir), "--model", str(root / "model"), "--output", str(root / "labels"),
                 "--segments", "1", "--review", "--review-files-root", str(root), "--runner", "DirectRunner"])
    return root / "labels"


def screenshot(root: Path, output: Path, width: int = 1280, height: int = 900) -> None:
    from beam_jobs import review

    executable = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if executable is None:
        raise SystemExit("error: chromium is not installed (make browser)")
    if reason := installed():
        raise SystemExit(f"error: {reason}")
    labels = root / "labels"
    if not (labels / "manifest.json").exists():  # --keep DIR of an earlier picture: its run is reused
        make_run(root)
    shutil.rmtree(root / "label-studio", ignore_errors=True)
    tasks = json.loads((labels / review.TASKS_FILE).read_text())
    with LabelStudioServer(root / "label-studio", files_root=root) as server:
        project = server.create_review_project("Review: least confident first",
                                               (labels / review.CONFIG_FILE).read_text(), root / "videos")
        (task_id,) = server.import_tasks(project, tasks[:1])
        with tempfile.TemporaryDirectory(prefix="review-screenshot-") as profile:
            browser = Browser(executable, profile, width, height)
            try:
                browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                             mobile=False)
                browser.call("Page.enable")
                browser.call("Page.navigate", url=f"{server.url}/user/login/")
                browser.wait_for("Page.loadEventFired")
                browser.call("Runtime.evaluate", expression=LOGIN % (json.dumps(USER), json.dumps(PASSWORD)))
                browser.wait_for("Page.loadEventFired")
                browser.call("Page.navigate", url=f"{server.url}/projects/{project}/data?task={task_id}")
                browser.wait_for("Page.loadEventFired")
                browser.call("Runtime.evaluate", expression=READY, awaitPromise=True, returnByValue=True, timeout=120)
                png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
            finally:
                browser.close()
    output.write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.review_screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR", help="make the run in DIR and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        screenshot(args.keep.resolve(), args.output)
    else:
        with tempfile.TemporaryDirectory(prefix="review-run-") as root:
            screenshot(Path(root), args.output)
    print(f"review_screenshot: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
