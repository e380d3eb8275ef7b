"""The stage that decodes and embeds reads no side input.

A runner fuses a chain of steps, with no grouping between them, into one stage; a step that reads a side input
makes its whole stage read it. Prism 2.77 (what `--runner DirectRunner` runs on) re-evaluates a stage that
reads a side input in a loop for as long as one of its bundles runs, a whole core: Beam's own file writers
read one beside the records they write, and fused into the decode-and-embed stage they cost the featurize job
half its speed on Prism (bench/runners.py). These tests read the jobs' pipelines as the runner receives them
and follow every side-input reader back to what produces its main input.
"""

from __future__ import annotations

import apache_beam as beam
import pytest

from conftest import featurize_args
from test_report import make_model_dir, predict_args, write_clips

GROUPING = {"beam:transform:group_by_key:v1", "beam:transform:impulse:v1"}  # where a fused stage begins
PARDO = "beam:transform:pardo:v1"
DECODE = "DecodeFrames/Decode/ParDo("  # DecodeFramesDoFn, or DecodeSegmentsDoFn with --segments


@pytest.fixture
def pipelines(monkeypatch) -> list:
    """The pipeline protos of every job run while the test runs."""
    seen, run = [], beam.Pipeline.run

    def recording_run(self, *args, **kwargs):
        seen.append(self.to_runner_api())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", recording_run)
    return seen


def fused_after(proto, name: str) -> dict[str, bool]:
    """{step: whether it reads a side input} for the one step whose name starts with `name` and every step whose
    main input comes from it through steps that do not group: what a runner fuses into its stage."""
    from apache_beam.portability.api import beam_runner_api_pb2

    def side_inputs(t) -> set[str]:
        if t.spec.urn != PARDO:
            return set()
        return set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)

    # The primitive steps: no sub-steps, and not a composite that hands its input on unchanged (Create's
    # MaybeReshuffle of one element), which would otherwise pass for the producer of its own input.
    steps = {tid: t for tid, t in proto.components.transforms.items()
             if not t.subtransforms and not (t.outputs and set(t.outputs.values()) <= set(t.inputs.values()))}
    consumers: dict[str, list[str]] = {}
    for tid, t in steps.items():
        for local, pcoll in t.inputs.items():
            if local not in side_inputs(t):
                consumers.setdefault(pcoll, []).append(tid)
    [start] = [tid for tid, t in steps.items() if t.unique_name.startswith(name)]
    stage, todo = {}, [start]
    while todo:
        tid = todo.pop()
        t = steps[tid]
        if t.unique_name in stage or (tid != start and t.spec.urn in GROUPING):
            continue
        stage[t.unique_name] = bool(side_inputs(t))
        todo += [c for pcoll in t.outputs.values() for c in consumers.get(pcoll, [])]
    return stage


def side_input_readers(stage: dict[str, bool]) -> list[str]:
    return sorted(step for step, reads in stage.items() if reads)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("stages"), per_class=1, seed=5, classes=["growing", "fading_in"])


def test_featurize_decodes_and_embeds_in_a_stage_without_side_inputs(clips, pipelines, tmp_path):
    from beam_jobs import featurize

    featurize.run(featurize_args(clips, tmp_path / "out", "--image-size", "32", "--max-seq-length", "4"))
    [proto] = pipelines
    stage = fused_after(proto, DECODE)
    assert {"EmbedFrames/Embed", "EncodeRecords"} <= set(stage)  # the walk follows the stage
    assert side_input_readers(stage) == []
    # Where a step reads a side input, it is found: the publishing step reads the counts, in the stage of the
    # Impulse that starts it.
    assert side_input_readers(fused_after(proto, "PublishOutputs/Once/Impulse")) == ["PublishOutputs/Publish"]


def test_predict_decodes_and_embeds_in_a_stage_without_side_inputs(clips, pipelines, tmp_path):
    from beam_jobs import predict

    model = make_model_dir(tmp_path / "model")
    predict.run(predict_args(clips, model, tmp_path / "labels", "--per-video", "--segments", "0.4",
                             "--segment-stride", "0.2"))
    [proto] = pipelines
    stage = fused_after(proto, DECODE)
    assert {"EmbedFrames/Embed", "Classify/BeamML_RunInference", "StaleLines"} <= set(stage)
    assert side_input_readers(stage) == []
