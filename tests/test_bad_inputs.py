"""The bad-file corpus: every kind of file an unattended folder may hold, through featurize and predict.

One folder holds good clips beside broken, odd and hostile files. Both jobs must finish, write a record (or a
label row) for every usable video and a `failures.csv` row with a specific reason for every other one, and
account for each: matched = written + failed. Cases that need a clock, a crash or a memory probe (decode
timeouts, a dying decoder, peak memory on a long clip) run on DecodeFrames or the decoder alone, where they
are cheap.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import wave

import av
import cv2
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_jobs import featurize, flags, predict
from video.isolated import IsolatedDecoder
from video.frames import DecodeError
from video.probe import describe_unopenable
from beam_jobs.matching import match_videos
from tools.sample_videos import render_clip, write_clip
from beam_jobs.cores import CoreRequest
from beam_jobs.decode import FAILURES, DecodeFrames, DecodeFramesDoFn, FrameOptions
from conftest import read_csv, read_records

FRAMES, IMAGE_SIZE = 4, 32
LONG_CLIP_FRAMES = 20_000
IS_ROOT = os.geteuid() == 0

# video id -> the reason its failures.csv row must give (a regular expression matched against the whole reason).
DAMAGED = r"damaged or truncated video: decoding failed after \d+ of the 60 frames the container lists \(FFmpeg: .+\)"
EXPECTED_FAILURES = {
    "bad/zero.mp4": re.escape("empty file (0 bytes)"),
    "bad/random.mp4": re.escape("cannot open as a video: unrecognised content (no known video container signature)"),
    "bad/text.avi": re.escape("cannot open as a video: the file holds text"),
    "bad/truncated.mp4": re.escape("cannot open as a video: damaged or truncated MP4/QuickTime file "
                                   "(its index, the moov box, is missing or cut off)"),
    "bad/truncated.avi": DAMAGED,
    "bad/corrupt_middle.mp4": DAMAGED,
    "bad/audio.wav.mp4": re.escape("cannot open as a video: no video stream (a WAV audio file)"),
    "bad/audio_track.mp4": re.escape("cannot open as a video: no video stream (an MP4/QuickTime file with "
                                     "audio tracks only)"),
    "bad/broken_link.avi": re.escape("broken symbolic link (its target does not exist)"),
    "bad/named_pipe.mp4": re.escape("not a regular file (a named pipe)"),
}
if not IS_ROOT:  # root reads any file whatever its mode; test_unreadable_file_reason covers the reason as root
    EXPECTED_FAILURES["bad/unreadable.avi"] = re.escape("cannot read the file: permission denied")
SUCCEEDING = {
    "good/clip.mp4", "good/clip.avi", "good/Clip ñandú 01.MP4", "good/UPPER CASE.AVI", "good/extra.m4v",
    "one/same.avi", "two/same.avi",
    "edge/single_frame.avi", "edge/wrong_count.avi", "edge/no_count.avi", "edge/long.avi", "edge/uhd_4k.avi",
}


def clip_frames(num_frames: int, seed: int = 0, width: int = 64, height: int = 48) -> np.ndarray:
    return render_clip("growing", np.random.default_rng(seed), num_frames, width, height)


def write_fast_clip(path, num_frames: int, width: int, height: int) -> None:
    """A long MJPG clip written directly (write_clip would decode all of it again to check it)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    frame = np.zeros((height, width, 3), np.uint8)
    for i in range(num_frames):
        frame[:] = (i * 7) % 256
        writer.write(frame)
    writer.release()


def patch_avi_frame_count(path, frame_count: int, fps: int | None = None) -> None:
    """Make an AVI's headers state `frame_count` frames (and `fps`), whatever the file holds."""
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, frame_count)  # avih.dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, frame_count)  # strh.dwLength, which FFmpeg reports
    if fps is not None:
        struct.pack_into("<II", data, strh + 8 + 20, 1, fps)  # strh.dwScale, dwRate
    path.write_bytes(bytes(data))


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, *parts: bytes, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", flags), *parts)


def audio_only_mp4(seconds: int = 1, rate: int = 8000) -> bytes:
    """A QuickTime-style MP4 holding one track: `seconds` of 16-bit mono PCM ('sowt'), and no video."""
    samples = rate * seconds
    pcm = (np.sin(np.arange(samples) / 8.0) * 3000).astype("<i2").tobytes()
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    ftyp = _box(b"ftyp", b"qt  ", struct.pack(">I", 0x200), b"qt  ")

    def moov(chunk_offset: int) -> bytes:
        sound_entry = _box(b"sowt", bytes(6), struct.pack(">H", 1), struct.pack(">HHI", 0, 0, 0),
                           struct.pack(">HHhHI", 1, 16, 0, 0, rate << 16))
        stbl = _box(b"stbl",
                    _full_box(b"stsd", struct.pack(">I", 1), sound_entry),
                    _full_box(b"stts", struct.pack(">III", 1, samples, 1)),
                    _full_box(b"stsc", struct.pack(">IIII", 1, 1, samples, 1)),
                    _full_box(b"stsz", struct.pack(">II", 2, samples)),
                    _full_box(b"stco", struct.pack(">II", 1, chunk_offset)))
        minf = _box(b"minf", _full_box(b"smhd", struct.pack(">hH", 0, 0)),
                    _box(b"dinf", _full_box(b"dref", struct.pack(">I", 1), _full_box(b"url ", flags=1))), stbl)
        mdia = _box(b"mdia",
                    _full_box(b"mdhd", struct.pack(">IIIIHH", 0, 0, rate, samples, 0x55C4, 0)),
                    _full_box(b"hdlr", struct.pack(">I", 0), b"soun", bytes(12), b"SoundHandler\0"),
                    minf)
        tkhd = _full_box(b"tkhd", struct.pack(">IIIII", 0, 0, 1, 0, samples), bytes(8),
                         struct.pack(">hhhH", 0, 0, 0x100, 0), matrix, struct.pack(">II", 0, 0), flags=7)
        mvhd = _full_box(b"mvhd", struct.pack(">IIIIIH", 0, 0, rate, samples, 0x10000, 0x100), bytes(10),
                         matrix, bytes(24), struct.pack(">I", 2))
        return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))

    offset = len(ftyp) + len(moov(0)) + 8
    return ftyp + moov(offset) + _box(b"mdat", pcm)


def build_corpus(root) -> None:
    """Good clips and every bad case of issue 5 under `root` (labels are folder names)."""
    for folder in ("good", "one", "two", "edge", "bad"):
        (root / folder).mkdir(parents=True)
    good = clip_frames(30)
    write_clip(str(root / "good" / "clip.mp4"), good, "mp4v")
    write_clip(str(root / "good" / "clip.avi"), clip_frames(24, seed=1), "MJPG")
    (root / "good" / "Clip ñandú 01.MP4").write_bytes((root / "good" / "clip.mp4").read_bytes())
    (root / "good" / "UPPER CASE.AVI").write_bytes((root / "good" / "clip.avi").read_bytes())
    (root / "good" / "extra.m4v").write_bytes((root / "good" / "clip.mp4").read_bytes())
    (root / "good" / "notes.txt").write_text("not a video, and not matched\n")
    write_clip(str(root / "one" / "same.avi"), clip_frames(20, seed=2), "MJPG")
    write_clip(str(root / "two" / "same.avi"), clip_frames(20, seed=3), "MJPG")

    write_clip(str(root / "edge" / "single_frame.avi"), good[:1], "MJPG")
    write_clip(str(root / "edge" / "wrong_count.avi"), good, "MJPG")
    patch_avi_frame_count(root / "edge" / "wrong_count.avi", 1000, fps=1)
    write_clip(str(root / "edge" / "no_count.avi"), good, "MJPG")
    patch_avi_frame_count(root / "edge" / "no_count.avi", 0)
    write_fast_clip(root / "edge" / "long.avi", LONG_CLIP_FRAMES, 64, 48)
    write_fast_clip(root / "edge" / "uhd_4k.avi", 2, 3840, 2160)

    bad = root / "bad"
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "random.mp4").write_bytes(np.random.default_rng(5).bytes(20_000))
    (bad / "text.avi").write_text("this is a text file, not a video\n" * 40)
    sixty = clip_frames(60, seed=4)
    write_clip(str(bad / "source.mp4"), sixty, "mp4v")
    write_clip(str(bad / "source.avi"), sixty, "MJPG")
    mp4, avi = (bad / "source.mp4").read_bytes(), (bad / "source.avi").read_bytes()
    (bad / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    (bad / "truncated.avi").write_bytes(avi[: len(avi) // 2])
    damaged = bytearray(mp4)
    start, stop = int(len(mp4) * 0.3), int(len(mp4) * 0.6)
    damaged[start:stop] = np.random.default_rng(6).bytes(stop - start)
    (bad / "corrupt_middle.mp4").write_bytes(bytes(damaged))
    (bad / "source.mp4").unlink()
    (bad / "source.avi").unlink()
    with wave.open(str(bad / "audio.wav.mp4"), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes((np.sin(np.arange(8000) / 8.0) * 3000).astype("<i2").tobytes())
    (bad / "audio_track.mp4").write_bytes(audio_only_mp4())
    os.symlink(bad / "gone.avi", bad / "broken_link.avi")
    os.mkfifo(bad / "named_pipe.mp4")
    if not IS_ROOT:
        (bad / "unreadable.avi").write_bytes(avi)
        (bad / "unreadable.avi").chmod(0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(root)
    yield root
    if not IS_ROOT:
        (root / "bad" / "unreadable.avi").chmod(0o644)  # so pytest can clean up


def job_args(corpus, output, *extra) -> list[str]:
    return ["--input", str(corpus), "--output", str(output), "--max-seq-length", str(FRAMES),
            "--image-size", str(IMAGE_SIZE), "--decode-timeout", "60", "--runner", "DirectRunner", *extra]


@pytest.fixture(scope="module")
def featurized(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("featurize") / "out"
    result = featurize.run(job_args(corpus, output, "--weights", "random", "--num-shards", "2"))
    return output, result


@pytest.fixture(scope="module")
def model_dir(featurized, tmp_path_factory):
    """An untrained classifier over the corpus's labels: predict needs a model, not a good one."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    output, _ = featurized
    labels = (output / "labels.txt").read_text().split()
    keras.utils.set_random_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES))
    path = tmp_path_factory.mktemp("model") / "model"
    spec = RecordSpec(1024, FRAMES, "densenet121/random-seed1337", IMAGE_SIZE)
    export_model_dir(model, labels, spec, str(path), saved_model=False)
    return path


@pytest.fixture(scope="module")
def predicted(corpus, model_dir, tmp_path_factory):
    """Predict over the same corpus; its --extensions (mixed case, no dots) leaves out the .m4v copy."""
    output = tmp_path_factory.mktemp("predict") / "out"
    predict.run(["--input", str(corpus), "--model", str(model_dir), "--output", str(output),
                 "--extensions", "MP4,Avi", "--decode-timeout", "60", "--runner", "DirectRunner"])
    return output


def all_matched_ids(corpus) -> set[str]:
    return {ref.video_id for ref in match_videos([str(corpus)])}


def test_the_corpus_is_what_it_claims(corpus):
    """The edge cases really are edge cases: the container lies about the count, the audio track parses."""
    assert all_matched_ids(corpus) == set(EXPECTED_FAILURES) | SUCCEEDING
    for name, stated in (("wrong_count.avi", 1000), ("no_count.avi", 0)):
        capture = cv2.VideoCapture(str(corpus / "edge" / name), cv2.CAP_FFMPEG)
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == stated
        capture.release()
    assert os.path.getsize(corpus / "edge" / "long.avi") > 1_000_000


def test_featurize_accounts_for_every_input(corpus, featurized):
    output, result = featurized
    manifest = json.loads((output / "manifest.json").read_text())
    records, failures = read_records(output), read_csv(output / "failures.csv")
    matched = len(set(EXPECTED_FAILURES) | SUCCEEDING)
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (
        matched, len(SUCCEEDING), len(EXPECTED_FAILURES))
    assert manifest["videos_matched"] == manifest["records_written"] + manifest["failures"]
    assert set(records) == SUCCEEDING
    assert {row["video_id"] for row in failures} == set(EXPECTED_FAILURES)
    counters = result.metrics().query(MetricsFilter().with_name("videos_failed"))["counters"]
    assert sum(c.committed for c in counters) == len(EXPECTED_FAILURES)
    assert not list(output.glob(".staging-*"))


def test_each_failure_has_its_specific_reason(featurized):
    output, _ = featurized
    for row in read_csv(output / "failures.csv"):
        assert re.fullmatch(EXPECTED_FAILURES[row["video_id"]], row["reason"]), (row["video_id"], row["reason"])
        assert "\n" not in row["reason"] and "Traceback" not in row["reason"]
        assert row["uri"].endswith(row["video_id"])


def test_edge_cases_become_proper_records(featurized):
    records = read_records(featurized[0])
    single = records["edge/single_frame.avi"]
    assert (single.num_valid_frames, list(single.frame_indices), single.decoded_frame_count) == (1, [0], 1)
    assert single.features.shape == (FRAMES, 1024) and np.isfinite(single.features[:1]).all()
    for name in ("edge/wrong_count.avi", "edge/no_count.avi"):  # counted while decoding, not taken from the header
        record = records[name]
        assert record.decoded_frame_count == 30 and record.num_valid_frames == FRAMES
        assert record.frame_indices[0] == 0 and record.frame_indices[-1] >= 30 - 30 // FRAMES
    long = records["edge/long.avi"]
    assert long.decoded_frame_count == LONG_CLIP_FRAMES and long.num_valid_frames == FRAMES
    assert long.frame_indices[0] == 0 and long.frame_indices[-1] >= LONG_CLIP_FRAMES * 3 // 4
    uhd = records["edge/uhd_4k.avi"]
    assert (uhd.frame_width, uhd.frame_height, uhd.num_valid_frames) == (3840, 2160, 2)


def test_names_and_duplicates_keep_distinct_ids_and_labels(featurized):
    records = read_records(featurized[0])
    assert records["good/Clip ñandú 01.MP4"].uri.endswith("good/Clip ñandú 01.MP4")
    assert records["good/UPPER CASE.AVI"].num_valid_frames == FRAMES
    assert (records["one/same.avi"].label, records["two/same.avi"].label) == ("one", "two")
    assert records["one/same.avi"].fingerprint != records["two/same.avi"].fingerprint
    # the same bytes under another name are another video, with the same features
    np.testing.assert_allclose(records["good/Clip ñandú 01.MP4"].features, records["good/clip.mp4"].features,
                               atol=1e-5)


def test_predict_accounts_for_every_input_with_the_same_reasons(featurized, predicted):
    manifest = json.loads((predicted / "manifest.json").read_text())
    rows, failures = read_csv(predicted / "labels.csv"), read_csv(predicted / "failures.csv")
    expected_ids = SUCCEEDING - {"good/extra.m4v"}  # --extensions MP4,Avi
    assert (manifest["videos_matched"], manifest["videos_labelled"], manifest["failures"]) == (
        len(expected_ids) + len(EXPECTED_FAILURES), len(expected_ids), len(EXPECTED_FAILURES))
    assert manifest["videos_matched"] == manifest["videos_labelled"] + manifest["failures"]
    assert {row["video_id"] for row in rows} == expected_ids
    featurize_failures = {row["video_id"]: row["reason"] for row in read_csv(featurized[0] / "failures.csv")}
    assert {row["video_id"]: row["reason"] for row in failures} == featurize_failures
    labels = (featurized[0] / "labels.txt").read_text().split()
    for row in rows:
        assert abs(sum(float(row[f"p_{label}"]) for label in labels) - 1.0) < 1e-4


@pytest.mark.parametrize("sampling", ["uniform", "keyframes"])
def test_both_samplings_give_the_corpus_the_same_accounting(corpus, sampling):
    """The decode stage alone, per sampling: the same videos decode and the same reasons come out, whether
    the reads seek or decode through."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    def reasons_match(rows):
        found = {video_id: reason for video_id, _, reason in rows}
        assert set(found) == set(EXPECTED_FAILURES), sorted(set(found) ^ set(EXPECTED_FAILURES))
        for video_id, reason in found.items():
            assert re.fullmatch(EXPECTED_FAILURES[video_id], reason), (video_id, reason)

    with TestPipeline() as pipeline:
        decoded = (pipeline | beam.Create(match_videos([str(corpus)]))
                   | DecodeFrames(FrameOptions(FRAMES, IMAGE_SIZE, sampling, decode_timeout_s=60)))
        assert_that(decoded[FAILURES], reasons_match, label="Failures")
        assert_that(decoded.videos | beam.Map(lambda v: (v.ref.video_id, len(set(v.sampled.frame_indices)) ==
                                                         len(v.sampled.frame_indices))),
                    equal_to([(video_id, True) for video_id in SUCCEEDING]), label="Videos")


def test_extensions_are_explicit_case_insensitive_and_overridable(corpus):
    everything = all_matched_ids(corpus)
    assert "good/notes.txt" not in everything and "good/extra.m4v" in everything
    only_avi = {ref.video_id for ref in match_videos([str(corpus)], flags.parse_extensions("AVI"))}
    assert only_avi == {i for i in everything if i.lower().endswith(".avi")}
    assert "good/UPPER CASE.AVI" in only_avi
    assert flags.parse_extensions(" .MP4, m4v ,") == (".mp4", ".m4v")


def test_unreadable_file_reason(tmp_path, monkeypatch):
    """As root no file mode blocks reading, so the permission error is raised where the job opens the file."""
    from beam_jobs import decode, matching

    path = tmp_path / "locked.avi"
    write_clip(str(path), clip_frames(8), "MJPG")
    (ref,) = matching.match_videos([str(tmp_path)])

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode, "open", denied, raising=False)
    dofn = DecodeFramesDoFn(FrameOptions(FRAMES, IMAGE_SIZE))
    dofn.setup()
    try:
        (out,) = [*dofn.process(ref), *dofn.finish_bundle()]
    finally:
        dofn.teardown()
    assert out.tag == FAILURES and out.value.value == ("locked.avi", ref.uri, "cannot read the file: permission denied")


def test_a_slow_file_times_out_and_the_rest_still_decode(tmp_path, monkeypatch):
    """Through DecodeFrames: the slow file is a failure row, the next file gets a fresh decoder. The clock is
    the test's: the decoder's wait for slow.mp4 runs out (its child is frozen, so it could not answer), the
    other files get the real wait, so load can make neither come out otherwise."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    import video.isolated

    class SlowOnSlowFiles(IsolatedDecoder):
        def _exchange(self, request):
            self.slow = isinstance(request, tuple) and request[0].endswith("slow.mp4")
            return super()._exchange(request)

        def _answered(self, timeout_s):
            if self.slow:
                os.kill(self._process.pid, signal.SIGSTOP)  # frozen: killed, as a late child is
                return False
            return super()._answered(timeout_s)

    monkeypatch.setattr(video.isolated, "IsolatedDecoder", SlowOnSlowFiles)
    # Listed first, so that the files after it need the decoder that replaced the late one.
    slow, quick, other = tmp_path / "a_slow.mp4", tmp_path / "quick.avi", tmp_path / "other.avi"
    write_clip(str(slow), clip_frames(12), "mp4v")
    write_clip(str(quick), clip_frames(12), "MJPG")
    write_clip(str(other), clip_frames(9), "MJPG")
    refs = match_videos([str(tmp_path)])
    assert refs[0].video_id == "a_slow.mp4"
    with TestPipeline() as pipeline:
        decoded = (pipeline | beam.Create(refs)
                   | DecodeFrames(FrameOptions(FRAMES, IMAGE_SIZE, decode_timeout_s=60), cores=CoreRequest(decoders=1)))
        assert_that(decoded[FAILURES], equal_to([
            ("a_slow.mp4", str(slow), "decoding timed out after 60s (--decode-timeout)")]), label="Failures")
        assert_that(decoded.videos | beam.Map(lambda v: (v.ref.video_id, v.sampled.decoded_frame_count)),
                    equal_to([("other.avi", 9), ("quick.avi", 12)]), label="Videos")


def test_a_file_that_blocks_the_decoder_cannot_hang_it(tmp_path):
    """A named pipe with no writer blocks FFmpeg's open() for good: only the time limit ends it."""
    pipe, quick = tmp_path / "pipe.mp4", tmp_path / "quick.avi"
    os.mkfifo(pipe)
    write_clip(str(quick), clip_frames(12), "MJPG")
    decoder = IsolatedDecoder(timeout_s=1.0)
    try:
        with pytest.raises(DecodeError, match=r"^decoding timed out after 1s \(--decode-timeout\)$"):
            decoder.decode(str(pipe), FRAMES, IMAGE_SIZE, "uniform")
        assert decoder.decode(str(quick), FRAMES, IMAGE_SIZE, "uniform").decoded_frame_count == 12
    finally:
        decoder.close()


def test_a_decoder_that_dies_is_a_crash_failure_and_is_replaced(corpus):
    """The child dies (SIGKILL, as the kernel's OOM killer sends) once it has been started for a file and
    before it answers: an event, not a timer, so load cannot make it die before or after."""

    class DiesOnLongFiles(IsolatedDecoder):
        def _exchange(self, request):
            if isinstance(request, tuple) and request[0].endswith("long.avi") and not getattr(self, "died", False):
                self.died = True
                self._process.kill()
                self._process.join()
            return super()._exchange(request)

    decoder = DiesOnLongFiles(timeout_s=60)
    long = str(corpus / "edge" / "long.avi")
    try:
        decoder.decode(str(corpus / "good" / "clip.avi"), FRAMES, IMAGE_SIZE, "uniform")  # child started
        first = decoder._process.pid
        with pytest.raises(DecodeError, match=r"^the decoder crashed on this file \(signal 9\)$"):
            decoder.decode(long, FRAMES, IMAGE_SIZE, "uniform")
        assert decoder.decode(long, FRAMES, IMAGE_SIZE, "uniform").decoded_frame_count == LONG_CLIP_FRAMES
        assert decoder._process.pid != first
    finally:
        decoder.close()


def test_a_bug_in_the_decoder_fails_the_job_and_a_bad_file_stays_a_failure(corpus, tmp_path):
    """A programming error in video/ (here: a sampling no flag allows reaches the child) is not a file's fault:
    DecoderBug, with the child's traceback, through DecodeFrames too; a file that is not a video is still a
    DecodeError (a failures.csv row), and the child goes on answering."""
    from video.isolated import DecoderBug

    text = tmp_path / "notes.avi"
    text.write_text("not a video\n" * 20)
    good = str(corpus / "good" / "clip.avi")
    decoder = IsolatedDecoder(timeout_s=60)
    try:
        with pytest.raises(DecoderBug, match=r"(?s)a bug, not a bad file.*Traceback.*ValueError: sampling must be"):
            decoder.decode(good, FRAMES, IMAGE_SIZE, "sideways")
        with pytest.raises(DecodeError, match="^cannot open as a video"):
            decoder.decode(str(text), FRAMES, IMAGE_SIZE, "uniform")
        assert len(decoder.decode(good, FRAMES, IMAGE_SIZE, "uniform").frame_indices) == FRAMES
    finally:
        decoder.close()
    (ref,) = match_videos([good])
    dofn = DecodeFramesDoFn(FrameOptions(FRAMES, IMAGE_SIZE, "sideways"))
    dofn.setup()
    try:
        with pytest.raises(DecoderBug):
            [*dofn.process(ref), *dofn.finish_bundle()]
    finally:
        dofn.teardown()


MEASURE_PEAK_RSS = """
import sys
from video.frames import decode_and_sample

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

decode_and_sample(sys.argv[1], 4, 32)  # libraries loaded and warm
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current size, so the peak below is the decode's own
except OSError:
    pass
before = status_kb("VmHWM")
sampled = decode_and_sample(sys.argv[2], 4, 32)
print(before, status_kb("VmHWM"), sampled.decoded_frame_count, len(sampled.frame_indices))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_decoding_a_very_long_clip_keeps_memory_bounded(corpus):
    """20,000 frames of 64x48: kept whole they would take 184 MB (61 MB resized to 32x32); decoding keeps the
    sampled frames, the packet index and at most 4 MB of packets (video.reader), so the peak barely moves. A fresh process, like the decoder's child
    (getrusage's peak would include the pytest process it was forked from)."""
    out = subprocess.run([sys.executable, "-c", MEASURE_PEAK_RSS, str(corpus / "good" / "clip.avi"),
                          str(corpus / "edge" / "long.avi")], capture_output=True, text=True, check=True).stdout
    before_kb, after_kb, decoded, sampled = map(int, out.split())
    assert (decoded, sampled) == (LONG_CLIP_FRAMES, FRAMES)
    print(f"decoder peak RSS {before_kb / 1024:.1f} MB -> {after_kb / 1024:.1f} MB over {decoded} frames")
    assert after_kb - before_kb < 16 * 1024


def test_unopenable_files_are_described_by_content_not_name(tmp_path):
    cases = {
        "id3.avi": b"ID3\x04\x00" + bytes(200),
        "flac.mkv": b"fLaC" + bytes(200),
        "webm.webm": b"\x1a\x45\xdf\xa3" + bytes(200),
        "riff.mp4": b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(200),
    }
    reasons = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        reasons[name] = describe_unopenable(str(tmp_path / name))
    assert reasons == {
        "id3.avi": "no video stream (an MP3/MPEG audio file)",
        "flac.mkv": "no video stream (a FLAC/Ogg audio file)",
        "webm.webm": "damaged or truncated Matroska/WebM file",
        "riff.mp4": "damaged or truncated AVI file",
    }


def test_a_link_back_up_the_tree_lists_each_video_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "v.avi").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "up")  # a/up/a/up/... without end
    os.symlink(tmp_path / "a", tmp_path / "z_alias")  # the same folder under a second name
    assert [ref.video_id for ref in match_videos([str(tmp_path)])] == ["a/v.avi"]
