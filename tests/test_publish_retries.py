"""Publishing under retries: whatever file operation of publishing fails, re-running the step (as a runner
retries a bundle) ends with the new output complete, and until then the output holds the previous run
untouched or nothing that looks finished. For `common.publish.publish`, featurize's and predict's publishing
steps (FinishFeaturize, FinishPredict), locally and on an object store (mem://, standing in for gs://).

`FlakyStorage` counts every file operation of Beam's FileSystems (each file of a batch rename, copy or delete
counted alone, as a batch can fail half done) and local removals, and fails the k-th: before doing it, or
after (a storage call whose answer is lost). Each test fails each operation in turn, k = 1, 2, ... until a
run has no k-th operation.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

import memfs  # noqa: F401  (registers mem://)
from beam_jobs import outputs
from beam_jobs.featurize import OUTPUT_PATTERNS, FinishFeaturize
from beam_jobs.publish_labels import FinishPredict
from common import fs, publish
from common.lease import Lease

MANIFEST = outputs.MANIFEST_FILE
VOLATILE = ("finished_at", "seconds", "package_versions", "run_id")


class Injected(OSError):
    """The storage error a test injects."""


class FlakyStorage:
    """Fails the `fail_at`-th file operation (1-based) `when` ("before" or "after" doing it); counts them all."""

    def __init__(self, monkeypatch, fail_at: int, when: str):
        self.fail_at, self.when, self.count = fail_at, when, 0
        real = fs.FileSystems
        flaky = self

        class Proxy:
            @staticmethod
            def create(path, *args, **kwargs):
                if flaky.count + 1 == flaky.fail_at and flaky.when == "after":  # written whole, answer lost
                    flaky.count += 1
                    return WrittenThenFailing(real.create(path, *args, **kwargs), flaky.count)
                flaky.op(None)
                return real.create(path, *args, **kwargs)

            @staticmethod
            def open(path, *args, **kwargs):
                flaky.op(None)
                return real.open(path, *args, **kwargs)

            @staticmethod
            def match(patterns, *args, **kwargs):
                flaky.op(None, listing=True)
                return real.match(patterns, *args, **kwargs)

            @staticmethod
            def exists(path):
                flaky.op(None)
                return real.exists(path)

            @staticmethod
            def rename(sources, destinations):
                for source, destination in zip(sources, destinations):
                    flaky.op(lambda s=source, d=destination: real.rename([s], [d]))

            @staticmethod
            def copy(sources, destinations):
                for source, destination in zip(sources, destinations):
                    flaky.op(lambda s=source, d=destination: real.copy([s], [d]))

            @staticmethod
            def delete(paths):
                for path in paths:
                    flaky.op(lambda p=path: real.delete([p]))

        real_remove_tree = fs.remove_tree

        def remove_tree(path):
            if fs.is_remote(path):
                return real_remove_tree(path)
            if os.path.isdir(path) and not os.path.islink(path):
                for folder, _, names in os.walk(path):
                    for name in names:
                        flaky.op(lambda p=os.path.join(folder, name): os.remove(p))
                flaky.op(lambda: shutil.rmtree(path))
            elif os.path.lexists(path):
                flaky.op(lambda: os.remove(path))

        monkeypatch.setattr(fs, "FileSystems", Proxy)
        monkeypatch.setattr(fs, "remove_tree", remove_tree)

    def op(self, action, listing: bool = False) -> None:
        """Count one operation and do it (`action`, None for the caller to do), failing it if it is the one."""
        self.count += 1
        failing = self.count == self.fail_at and (not listing or listing_errors_propagate())
        if failing and (self.when == "before" or action is None):
            raise Injected(f"injected storage error at operation {self.count}")
        if action is not None:
            action()
        if failing:
            raise Injected(f"injected storage error after operation {self.count}")


class WrittenThenFailing:
    """A write channel whose content is stored whole when it closes, and whose close then fails."""

    def __init__(self, writer, count: int):
        self._writer, self._count = writer, count

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if not self._writer.closed:
            self._writer.close()
            raise Injected(f"injected storage error after operation {self._count}")


def listing_errors_propagate() -> bool:
    """Whether `fs.match` lets a storage error through. Where it answers [] instead, a failed listing of the
    previous run's files looks like an empty one and they are silently kept (issue 39, finding 9, fixed in
    common/fs.py on its own branch): listings are then counted but not failed here."""
    def failing(*_):
        raise Injected("listing failed")

    real = fs.FileSystems.match
    try:
        fs.FileSystems.match = failing
        fs.match("/nowhere/*")
        return False
    except Injected:
        return True
    finally:
        fs.FileSystems.match = real


# What each publishing step publishes over a previous finished run.


def old_run(output: str, files: dict[str, str], manifest: dict) -> None:
    for name, text in files.items():
        fs.write_text(fs.join(output, name), text)
    fs.write_json(fs.join(output, MANIFEST), manifest)


USER_FILES = {"notes.txt": "the user's own notes"}


def plain_step(output: str, staging: str, run_id: str | None):
    old_run(output, {"labels.csv": "old labels", "per_video/a.csv": "old a", "per_video/gone.csv": "old gone",
                     **USER_FILES}, {"job": "test", "outputs": ["labels.csv", "per_video/**"]})
    for name in ("labels.csv", "per_video/a.csv", "per_video/b/c.csv"):
        fs.write_text(fs.join(staging, name), f"new {name}")

    def step():
        staged = fs.files_under(staging)
        publish.publish(output, staging, staged, MANIFEST, fs.json_text({"job": "test", "run_id": run_id}),
                        replace=[fs.join(output, "labels.csv"), fs.join(output, "per_video")],
                        outputs=["labels.csv", "per_video/**"], run_id=run_id)

    return step


def featurize_step(output: str, staging: str, run_id: str | None):
    old_run(output, {"features-00000-of-00002.tfrecord": "old 0", "features-00001-of-00002.tfrecord": "old 1",
                     "labels.txt": "old\n", outputs.FAILURES_FILE: "video_id,uri,reason\n", **USER_FILES},
            {"job": "featurize", "outputs": list(OUTPUT_PATTERNS)})
    shards = [fs.join(staging, f"features-{i:05d}-of-00003.tfrecord") for i in range(3)]
    for i, shard in enumerate(shards):
        fs.write_text(shard, f"new records {i}")
    failures = fs.join(staging, "_parts", "failures-00000-of-00016.txt")
    fs.write_text(failures, "bad.avi,/in/bad.avi,empty file (0 bytes)\n")
    finish = FinishFeaturize(output=output, staging=staging, run_id=run_id, manifest={"job": "featurize"})
    counts = {"matched": 4, "written": 3, "failed": 1, "frames": 12}
    return lambda: finish(counts, shards, ["b", "a"], [(failures, 1)])


PREDICT_COLUMNS = ("video_id", "video_uri", "label", "confidence", "top_k", "p_a", "p_b", "model_id")


def predict_step(output: str, staging: str, run_id: str | None):
    old_run(output, {"labels.csv": "old labels", outputs.FAILURES_FILE: "old failures", "report.html": "old report",
                     "index-00000-of-00001.jsonl": "old index", "thumbnails/a.mp4.jpg": "old thumb a",
                     "thumbnails/gone.mp4.jpg": "old thumb gone", "per_video/gone.mp4.csv": "old gone", **USER_FILES},
            {"job": "predict", "options": {"per_video": True},
             "outputs": ["labels.csv", "failures.csv", "report.html", "index-*-of-*.jsonl", "thumbnails/**",
                         "per_video/**"]})
    parts = fs.join(staging, "_parts")
    rows = [["a.mp4", "/in/a.mp4", "a", "0.9", "a:0.90", "0.9", "0.1", "m1"],
            ["b.mp4", "/in/b.mp4", "b", "0.8", "b:0.80", "0.2", "0.8", "m1"]]
    fs.write_text(fs.join(parts, "labels-00000-of-00016.txt"), "".join(",".join(r) + "\n" for r in rows))
    fs.write_text(fs.join(parts, "failures-00000-of-00016.txt"), "c.mp4,/in/c.mp4,empty file (0 bytes)\n")
    # JSON lines: an id may hold a line break
    fs.write_text(fs.join(parts, "removed-00000-of-00001"), json.dumps("gone.mp4") + "\n")
    for name in ("index-00000-of-00002.jsonl", "index-00001-of-00002.jsonl", "thumbnails/b.mp4.jpg",
                 "per_video/a.mp4.csv", "per_video/b.mp4.csv"):
        fs.write_text(fs.join(staging, name), f"new {name}")
    finish = FinishPredict(output=output, staging=staging, run_id=run_id, columns=PREDICT_COLUMNS,
                           manifest={"job": "predict", "model_id": "m1", "labels": ["a", "b"],
                                     "options": {"per_video": True}})
    counts = {"matched": 3, "by_model": 1, "reused_content": 0, "carried": 1, "failed": 1, "per_video": 2}
    summary = {"videos": 2, "failures": 1, "label_counts": [("a", 1), ("b", 1)], "histogram": [0] * 9 + [2],
               "shown_rows": [], "shown_failures": []}
    return lambda: finish(counts, summary, [(fs.join(parts, "labels-00000-of-00016.txt"), 2)],
                          [(fs.join(parts, "failures-00000-of-00016.txt"), 1)],
                          removed_files=[fs.join(parts, "removed-00000-of-00001")])


STEPS = {"publish": plain_step, "featurize": featurize_step, "predict": predict_step}


def snapshot(output: str) -> dict[str, object]:
    """Every file under `output` and its content (a manifest without its times; report.html as being there)."""
    found = {}
    for path in fs.files_under(output):
        name = fs.relative(path, output)
        if name == MANIFEST:
            found[name] = {k: v for k, v in fs.read_json(path).items() if k not in VOLATILE}
        elif name.endswith(".html"):
            found[name] = "a page"
        else:
            found[name] = fs.read_bytes(path)
    return found


def attempt(step_name: str, root: str, fail_at: int, when: str, monkeypatch) -> tuple[dict, dict, dict, bool, int]:
    """(the output before, after the failing try, after the retry; whether an operation failed, and how many
    file operations the first try made)."""
    output = fs.join(root, f"{when}-{fail_at}")
    lease = None if output.startswith("mem://") else Lease.acquire(output, ttl_s=600)  # mem:// has no lease
    run_id = lease.run_id if lease else "run-mem"
    staging = publish.new_staging(output)
    step = STEPS[step_name](output, staging, run_id)
    before = snapshot(output)
    failed = False
    with monkeypatch.context() as patched:
        storage = FlakyStorage(patched, fail_at, when)
        try:
            step()
        except Injected:
            failed = True
    after_failure = snapshot(output)
    step()  # the runner's retry
    after_retry = snapshot(output)
    if lease:
        lease.release()
    return before, after_failure, after_retry, failed, storage.count


def bookkeeping(files: dict) -> dict:
    return {name: v for name, v in files.items() if not publish.is_bookkeeping(name)}


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("where", ["local", "mem"])
@pytest.mark.parametrize("step_name", sorted(STEPS))
def test_a_publish_retried_after_any_failed_operation_ends_complete(step_name, where, when, tmp_path, bucket,
                                                                    monkeypatch):
    root = str(tmp_path) if where == "local" else bucket
    assert check_every_failure(step_name, root, when, monkeypatch) >= 10


def check_every_failure(step_name: str, root: str, when: str, monkeypatch, every: int = 1, first: int = 1) -> int:
    """Fail each file operation of publishing in turn (with `every` N, every Nth from the `first`) and retry;
    returns how many operations there were (tests/test_gcs.py runs this against the Cloud Storage emulator)."""
    _, _, clean, _, operations = attempt(step_name, root, 0, when, monkeypatch)  # fail_at 0: nothing fails
    assert clean[MANIFEST]["job"] == ("test" if step_name == "publish" else step_name)
    assert all(clean[name] == text.encode() for name, text in USER_FILES.items())  # not the product's: kept
    assert not [name for name in clean if publish.is_bookkeeping(name) and not name.startswith(".lease")]
    for fail_at in range(first, operations + 1, every):  # every file operation of publishing fails once
        before, after_failure, after_retry, failed, _ = attempt(step_name, root, fail_at, when, monkeypatch)
        old = bookkeeping(before)
        # Until the retry: the previous run untouched, or nothing that looks finished (or, failing after the
        # manifest's move, the new output complete).
        if MANIFEST in after_failure:
            assert bookkeeping(after_failure) in (old, bookkeeping(clean)), f"operation {fail_at}"
        assert failed or bookkeeping(after_failure) == bookkeeping(clean), f"operation {fail_at}: error hidden"
        assert bookkeeping(after_retry) == bookkeeping(clean), f"retry after a failure at operation {fail_at}"
        assert [n for n in after_retry if n.startswith((publish.STAGING_PREFIX, publish.PUBLISHING_FILE))] == []
    return operations


def test_the_mark_names_what_a_publish_replaces_and_is_gone_after_it(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    staging = publish.new_staging(output)
    step = plain_step(output, staging, None)
    seen = []
    real_move = fs.move

    def recording_move(sources, destinations):
        seen.append(fs.read_json(fs.join(output, publish.PUBLISHING_FILE)))
        real_move(sources, destinations)

    monkeypatch.setattr(fs, "move", recording_move)
    step()
    assert seen[0] == {"staging": os.path.basename(staging), "previous": ["labels.csv", "per_video/**"],
                       "outputs": ["labels.csv", "per_video/**"]}
    assert not os.path.exists(fs.join(output, publish.PUBLISHING_FILE))
