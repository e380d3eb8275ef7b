"""The labelling report: thumbnail strips, the page itself, the predict job writing it (also across an
incremental re-run), and the page in a real headless browser (Debian's chromium, driven over the Chrome
DevTools protocol on a pipe by tools.report_screenshot.Browser; skipped when chromium is not installed).
"""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from beam_jobs import events, report, report_timeline
from tools.report_screenshot import BROWSERS, Browser

IMAGE_SIZE = 32
FRAMES = 4
CLASSES = ("growing", "shrinking", "fading_in")
BROKEN_VIDEO = "broken/not_a_video.mp4"


# --- Fixtures: a tiny untrained model, a few clips and one predict run ---------------------------------


def make_model_dir(path: Path, labels=CLASSES) -> Path:
    """An untrained classifier for 32-px, 4-frame random-backbone features: outputs vary by video, which is
    all these tests need."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    keras.utils.set_random_seed(3)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES))
    spec = RecordSpec(1024, FRAMES, "densenet121/random-seed1337", IMAGE_SIZE)
    export_model_dir(model, sorted(labels), spec, str(path), saved_model=False)
    return path


def write_clips(root: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    from tools.sample_videos import write_sample_set

    write_sample_set(str(root), per_class=per_class, seed=seed, classes=classes, min_frames=6, max_frames=14,
                     sizes=[(64, 48), (48, 48)])
    return root


def predict_args(inputs: Path, model: Path, output: Path, *extra) -> list[str]:
    return ["--input", str(inputs), "--model", str(model), "--output", str(output), "--batch-size", "8",
            "--runner", "DirectRunner", *map(str, extra)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("report_model") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """3 clips and a file that is not a video."""
    root = write_clips(tmp_path_factory.mktemp("report_clips"), per_class=1, seed=4)
    (root / BROKEN_VIDEO).parent.mkdir()
    (root / BROKEN_VIDEO).write_bytes(b"this is not a video" * 10)
    return root


@pytest.fixture(scope="module")
def labelled(clips, model_dir, tmp_path_factory) -> Path:
    """The first predict run over `clips`."""
    from beam_jobs import predict

    output = tmp_path_factory.mktemp("report_out") / "labels"
    predict.run(predict_args(clips, model_dir, output))
    return output


@pytest.fixture(scope="module")
def relabelled(labelled, clips, model_dir, tmp_path_factory) -> Path:
    """A scheduled re-run after one clip was removed from `clips` and one added, into a copy of `labelled`'s
    output (which stays as it was; no other test reads `clips` again)."""
    from beam_jobs import predict

    output = tmp_path_factory.mktemp("report_rerun") / "labels"
    shutil.copytree(labelled, output)
    for path in (clips / "shrinking").iterdir():
        path.unlink()
    more = write_clips(tmp_path_factory.mktemp("more_clips"), per_class=1, seed=7, classes=("hue_forward",))
    shutil.copytree(more / "hue_forward", clips / "hue_forward")
    messages, logger = MessageCollector(), logging.getLogger("beam_jobs.predict")
    level = logger.level
    logger.addHandler(messages)
    logger.setLevel(logging.INFO)
    try:
        predict.run(predict_args(clips, model_dir, output))
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
    RERUN_LOG[:] = messages.lines
    return output


RERUN_LOG: list[str] = []  # what beam_jobs.predict logged during the re-run


class MessageCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ReportParser(html.parser.HTMLParser):
    """The rows of the report's tables: per table id, a list of rows, each {"id", "cells", "img"}."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self._table = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None and "data-video-id" in attrs:
            self._row = {"id": attrs["data-video-id"], "cells": [], "values": [], "img": None}
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["values"].append(attrs.get("data-value"))
        elif tag == "img" and self._row is not None:
            self._row["img"] = attrs["src"]
        elif self._cell is not None:
            self._cell.append(" ")  # elements inside a cell (list items) read as separate words

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_report(text: str) -> dict[str, list[dict]]:
    parser = ReportParser()
    parser.feed(text)
    return parser.tables


def jpeg_from_data_uri(uri: str) -> bytes:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix):])


# --- Thumbnails ------------------------------------------------------------------------------------------


def test_thumbnail_strip_spreads_frames_evenly_in_one_small_jpeg():
    # 20 frames of flat grey levels 0, 10, ..., 190: the strip must show frames 0, 3, 5, 8, 11, 14, 16, 19.
    frames = np.stack([np.full((64, 64, 3), 10 * i, np.uint8) for i in range(20)])
    jpeg = report.thumbnail_strip(frames)
    strip = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    side, gap = report.THUMBNAIL_SIDE, report.THUMBNAIL_GAP
    assert strip.shape == (side, 8 * side + 7 * gap, 3)
    tile_means = [strip[8:-8, i * (side + gap) + 8 : i * (side + gap) + side - 8].mean() for i in range(8)]
    np.testing.assert_allclose(tile_means, [0, 30, 50, 80, 110, 140, 160, 190], atol=3)
    assert strip[:, side : side + gap].min() > 240  # the gap between tiles is white
    assert len(jpeg) < 3000


def test_thumbnail_strip_keeps_small_frames_small_and_refuses_other_arrays():
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    frames[1] = 255
    strip = cv2.imdecode(np.frombuffer(report.thumbnail_strip(frames), np.uint8), cv2.IMREAD_COLOR)
    assert strip.shape == (32, 3 * 32 + 2 * report.THUMBNAIL_GAP, 3)  # never upscaled past the sampled size
    assert strip[:, 34 + 4 : 34 + 28].mean() > 245 and strip[:, 4:28].mean() < 10
    for bad in (np.zeros((0, 32, 32, 3), np.uint8), np.zeros((2, 32, 32), np.uint8), np.zeros((2, 8, 8, 3))):
        with pytest.raises(ValueError, match="frames must be uint8"):
            report.thumbnail_strip(bad)


def test_thumbnail_paths_mirror_video_ids():
    assert report.thumbnail_path("Biking/v_1.avi") == "thumbnails/Biking/v_1.avi.jpg"
    assert report.thumbnail_path("gs://bucket/in/a.mp4") == "thumbnails/bucket/in/a.mp4.jpg"


# --- The page --------------------------------------------------------------------------------------------


def label_row(video_id, label, confidence, top_k, uri=None):
    return {"video_id": video_id, "video_uri": uri or f"/data/{video_id}", "label": label,
            "confidence": f"{confidence:.6f}", "top_k": top_k}


def test_render_report_lists_rows_counts_and_failures_with_everything_escaped():
    rows = [
        label_row("b/<script>alert(1)</script>.mp4", "cat", 0.9, "cat:0.900000;dog:0.100000"),
        label_row("a/one.mp4", "unknown", 0.4, "dog:0.400000;cat:0.350000", uri="gs://bucket/a/one #1.mp4"),
        label_row("c/x:y.mp4", "cat", 0.7, "cat:0.700000;dog:0.300000"),
    ]
    failures = [("z/bad.mp4", "/data/z/bad.mp4", 'cannot open as a video ("<>")')]
    page = report.render_report(rows, failures, {"a/one.mp4": b"\xff\xd8jpeg"}, {"Model": "m & n"})
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "m &amp; n" in page
    tables = parse_report(page)
    videos = tables["labels"]
    assert [r["id"] for r in videos] == ["a/one.mp4", "b/<script>alert(1)</script>.mp4", "c/x:y.mp4"]
    assert [r["cells"][2] for r in videos] == ["unknown", "cat", "cat"]
    assert [r["values"][3] for r in videos] == ["0.400000", "0.900000", "0.700000"]
    assert [r["cells"][3] for r in videos] == ["40.0%", "90.0%", "70.0%"]
    assert videos[0]["cells"][4] == "dog 40.0% cat 35.0%"
    assert jpeg_from_data_uri(videos[0]["img"]) == b"\xff\xd8jpeg"
    assert videos[1]["img"] is None and videos[1]["cells"][0] == "no frames"
    assert 'href="https://storage.cloud.google.com/bucket/a/one%20%231.mp4"' in page
    assert 'href="file:///data/c/x%3Ay.mp4"' in page
    assert '<tr data-video-id="a/one.mp4" class="unknown">' in page
    assert [r["cells"] for r in tables["failures"]] == [["z/bad.mp4", "/data/z/bad.mp4",
                                                         'cannot open as a video ("<>")']]
    counts = parse_report(page.replace("<tr><td>", '<tr data-video-id="count"><td>'))["label-counts"]
    assert [r["cells"] for r in counts] == [["cat", "2", "66.7%"], ["unknown", "1", "33.3%"]]
    assert "http://" not in page and "<link" not in page and "src=\"http" not in page  # nothing to fetch


def test_render_report_without_failures_says_so():
    page = report.render_report([label_row("a.mp4", "cat", 0.5, "cat:0.5")], [], {}, {})
    assert '<p id="no-failures">' in page and "Failures (0)" in page


def test_a_long_timeline_is_coarsened_to_its_longest_labels():
    spans = [(float(k), float(k + 1), "a" if k % 10 else "b", 0.5 if k % 10 else 1.0) for k in range(1000)]
    blocks = events.timeline_blocks(spans, most=20)
    assert len(blocks) == 1 and blocks[0][:3] == (0.0, 1000.0, "a")  # b shows 1 s in every 50: never the most
    mixed = [(float(k), float(k + 1), "ab"[(k // 100) % 2], 0.9) for k in range(1000)]
    blocks = events.timeline_blocks(mixed, most=20)
    assert [b[2] for b in blocks] == list("ababababab") and blocks[1][:2] == (100.0, 200.0)
    assert events.timeline_blocks([(0.0, 5.0, "a", 0.5), (5.0, 10.0, "a", 1.0)]) == [(0.0, 10.0, "a", 0.75)]


def test_rows_with_a_timeline_get_a_coloured_strip_and_a_legend():
    timeline = [(0.0, 30.0, "cat", 0.9), (30.0, 45.0, "unknown", 0.3), (45.0, 90.0, "dog", 0.8)]
    rows = [dict(label_row("a.mp4", "cat", 0.6, "cat:0.6;dog:0.4"), **{report.TIMELINE: timeline}),
            label_row("b.mp4", "dog", 0.9, "dog:0.9;cat:0.1")]
    page = report.render_report(rows, [], {}, {}, labels=("cat", "dog"))
    colours = report_timeline.label_colours(("cat", "dog"))
    strip = (f"linear-gradient(90deg,{colours['cat']} 0.00% 33.33%,{report_timeline.UNKNOWN_COLOUR} 33.33% 50.00%,"
             f"{colours['dog']} 50.00% 100.00%)")
    assert strip in page and 'title="0:00-0:30 cat 90.0%\n0:30-0:45 unknown 30.0%\n0:45-1:30 dog 80.0%"' in page
    assert "<th>Timeline</th>" in page and page.count('<td class="timeline">') == 2  # b.mp4's is empty
    assert '<span class="end">1:30</span>' in page and "</span>cat<span" in page and "</span>dog<span" in page
    assert "Timeline" not in report.render_report(rows[1:], [], {}, {})


# --- The predict job writes it -------------------------------------------------------------------------


def test_predict_writes_the_report_beside_labels_csv(labelled):
    rows = {r["video_id"]: r for r in read_csv(labelled / "labels.csv")}
    failures = read_csv(labelled / "failures.csv")
    assert len(rows) == 3 and [f["video_id"] for f in failures] == [BROKEN_VIDEO]
    page = (labelled / "report.html").read_text()
    tables = parse_report(page)
    videos = tables["labels"]
    assert [r["id"] for r in videos] == sorted(rows)
    for shown in videos:
        row = rows[shown["id"]]
        assert shown["cells"][2] == row["label"]
        assert shown["values"][3] == row["confidence"]
        assert shown["cells"][3] == f"{100 * float(row['confidence']):.1f}%"
        top = [pair.rpartition(":") for pair in row["top_k"].split(";")]
        assert shown["cells"][4] == " ".join(f"{label} {100 * float(p):.1f}%" for label, _, p in top)
        # The embedded strip is the thumbnail file: 4 sampled frames of 32 px.
        jpeg = jpeg_from_data_uri(shown["img"])
        assert jpeg == (labelled / report.thumbnail_path(shown["id"])).read_bytes()
        strip = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert strip.shape == (IMAGE_SIZE, FRAMES * IMAGE_SIZE + (FRAMES - 1) * report.THUMBNAIL_GAP, 3)
        assert strip.std() > 5  # a picture, not a blank
    assert [r["cells"] for r in tables["failures"]] == [[f["video_id"], f["uri"], f["reason"]] for f in failures]
    assert "cannot open as a video" in failures[0]["reason"]
    assert sorted(p.relative_to(labelled).as_posix() for p in (labelled / "thumbnails").rglob("*.jpg")) == \
        sorted(report.thumbnail_path(v) for v in rows)
    manifest = json.loads((labelled / "manifest.json").read_text())
    assert manifest["frames_sampled"] == 3 * FRAMES and manifest["videos_labelled"] == 3
    assert not list(labelled.glob(".staging-*"))
    assert len(page.encode()) < 3 * 4000 + 12000  # 3 small strips and the page itself


def test_incremental_rerun_carries_thumbnails_over_and_drops_removed_videos(labelled, relabelled):
    before = {p.relative_to(labelled).as_posix(): p.read_bytes() for p in (labelled / "thumbnails").rglob("*.jpg")}
    rows = read_csv(relabelled / "labels.csv")
    assert sorted(r["video_id"].split("/")[0] for r in rows) == ["fading_in", "growing", "hue_forward"]
    manifest = json.loads((relabelled / "manifest.json").read_text())
    assert (manifest["reused_from_previous_run"], manifest["labelled_this_run"], manifest["failures"]) == (2, 1, 1)
    assert manifest["frames_sampled"] == FRAMES  # only the new clip was decoded (the broken file fails again)
    after = {p.relative_to(relabelled).as_posix(): p.read_bytes()
             for p in (relabelled / "thumbnails").rglob("*.jpg")}
    assert sorted(after) == sorted(report.thumbnail_path(r["video_id"]) for r in rows)  # the removed one is gone
    carried = [report.thumbnail_path(r["video_id"]) for r in rows if not r["video_id"].startswith("hue_forward/")]
    assert len(carried) == 2 and all(after[path] == before[path] for path in carried)
    page = (relabelled / "report.html").read_text()
    shown = parse_report(page)["labels"]
    assert [r["id"] for r in shown] == sorted(r["video_id"] for r in rows)
    assert all(jpeg_from_data_uri(r["img"]) == after[report.thumbnail_path(r["id"])] for r in shown)
    assert "3 labelled (1 by the model in this run, 2 carried over from the previous run), 1 failed" in page


def test_predict_ends_with_a_summary_of_counts_rates_and_outputs(relabelled):
    summary = [line for line in RERUN_LOG if line.startswith("predict finished in ")]
    assert len(summary) == 1, RERUN_LOG
    assert re.search(r"3 of 4 videos labelled \(1 by the model, 2 carried over from the previous run\), 1 failed; "
                     rf"2 videos read at [0-9.]+/s, {FRAMES} frames sampled at [0-9.]+ frames/s$", summary[0])
    outputs = [line for line in RERUN_LOG if line.startswith("predict outputs in ")]
    assert re.fullmatch(rf"predict outputs in {re.escape(str(relabelled))}: labels.csv \(3 rows\), failures.csv "
                        r"\(1\), report.html \([0-9]+ KB\), thumbnails/ \(3 JPEGs\), manifest.json", outputs[0])


# --- In a real browser -------------------------------------------------------------------------------------

CHROMIUM = next((p for p in map(shutil.which, BROWSERS) if p), None)
WINDOW = (1200, 800)


ROWS_JS = """Array.from(document.querySelectorAll('#labels tbody tr')).map(r => [r.dataset.videoId,
  parseFloat(r.cells[3].dataset.value), r.cells[3].innerText.trim(), r.cells[0].querySelector('img') ?
  r.cells[0].querySelector('img').naturalWidth : 0])"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); the "
                                             "report is then only checked as HTML, not in a browser")
def test_report_in_headless_chromium_sorts_by_confidence(labelled, tmp_path):
    rows = read_csv(labelled / "labels.csv")
    by_confidence = sorted(rows, key=lambda r: (float(r["confidence"]), r["video_id"]))
    browser = Browser(CHROMIUM, str(tmp_path / "profile"), *WINDOW)
    try:
        browser.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.enable")
        browser.call("Network.enable")
        browser.call("Page.navigate", url=(labelled / "report.html").as_uri())
        browser.wait_for("Page.loadEventFired")
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
        assert requested and all(url.startswith(("file://", "data:")) for url in requested), requested

        shown = browser.evaluate(ROWS_JS)
        assert [r[0] for r in shown] == sorted(r["video_id"] for r in rows)
        assert all(r[3] == FRAMES * IMAGE_SIZE + (FRAMES - 1) * report.THUMBNAIL_GAP for r in shown)  # decoded
        assert browser.evaluate("document.querySelectorAll('#failures tbody tr').length") == 1
        assert BROKEN_VIDEO in browser.evaluate("document.getElementById('failures').innerText")

        browser.click("#labels th[data-first] button")  # Confidence: least confident first
        shown = browser.evaluate(ROWS_JS)
        assert [r[0] for r in shown] == [r["video_id"] for r in by_confidence]
        assert [r[1] for r in shown] == sorted(float(r["confidence"]) for r in rows)
        assert [r[2] for r in shown] == [f"{100 * float(r['confidence']):.1f}%" for r in by_confidence]
        assert browser.evaluate("document.querySelector('#labels th[data-first]').getAttribute('aria-sort')") \
            == "ascending"

        browser.click("#labels th[data-first] button")  # again: most confident first
        most_confident_first = sorted(rows, key=lambda r: (-float(r["confidence"]), r["video_id"]))
        assert [r[0] for r in browser.evaluate(ROWS_JS)] == [r["video_id"] for r in most_confident_first]
        browser.click("#labels th:nth-child(2) button")  # back to video id order
        assert [r[0] for r in browser.evaluate(ROWS_JS)] == sorted(r["video_id"] for r in rows)

        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    assert image.std() > 10  # text, thumbnails and bars, not an empty page
