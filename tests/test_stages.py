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


def side_input_readers_fused_with(proto, name: str) -> list[str]:
    """The steps that read a side input and would run in the same stage as the one step whose name starts with
    `name`: those whose main input comes from it through steps that do not group."""
    from apache_beam.portability.api import beam_runner_api_pb2

    transforms = proto.components.transforms
    leaves = {tid: t for tid, t in transforms.items() if not t.subtransforms}
    producer = {pcoll: tid for tid, t in leaves.items() for pcoll in t.outputs.values()}
    [target] = [tid for tid, t in leaves.items() if t.unique_name.startswith(name)]

    def side_inputs(t) -> set[str]:
        if t.spec.urn != PARDO:
            return set()
        return set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)

    def fused_with_target(tid: str) -> bool:
        todo, seen = [tid], set()
        while todo:
            current = todo.pop()
            if current == target:
                return True
            if current in seen or leaves[current].spec.urn in GROUPING:
                continue
            seen.add(current)
            t = leaves[current]
            todo += [producer[p] for local, p in t.inputs.items() if local not in side_inputs(t) and p in producer]
        return False

    return sorted(t.unique_name for tid, t in leaves.items() if side_inputs(t) and fused_with_target(tid))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("stages"), per_class=1, seed=5, classes=["growing", "fading_in"])


def test_featurize_decodes_and_embeds_in_a_stage_without_side_inputs(clips, pipelines, tmp_path):
    from beam_jobs import featurize

    featurize.run(featurize_args(clips, tmp_path / "out", "--image-size", "32", "--max-seq-length", "4"))
    [proto] = pipelines
    assert side_input_readers_fused_with(proto, DECODE) == []
    # The check finds a side-input reader where there is one: the publishing step reads the counts, in the stage
    # of the Impulse that starts it.
    assert side_input_readers_fused_with(proto, "PublishOutputs/Once/Impulse") == ["PublishOutputs/Publish"]


def test_predict_decodes_and_embeds_in_a_stage_without_side_inputs(clips, pipelines, tmp_path):
    from beam_jobs import predict

    model = make_model_dir(tmp_path / "model")
    predict.run(predict_args(clips, model, tmp_path / "labels", "--per-video", "--segments", "0.4",
                             "--segment-stride", "0.2"))
    [proto] = pipelines
    assert side_input_readers_fused_with(proto, DECODE) == []
