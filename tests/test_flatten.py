"""FlattenApart: beam.Flatten whose every input PCollection no other step reads, the shape Flink's and Spark's
job servers accept (Beam issue 34647)."""

from __future__ import annotations

import re
from pathlib import Path

import apache_beam as beam
from apache_beam.portability import common_urns
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.flatten import FlattenApart

BEAM_JOBS = Path(__file__).resolve().parents[1] / "beam_jobs"


def _shared_flatten_inputs(pipeline) -> list[str]:
    """The PCollections that go into a Flatten and into some other step too."""
    transforms = pipeline.to_runner_api().components.transforms
    consumers: dict[str, set[str]] = {}
    for name, transform in transforms.items():
        if not transform.subtransforms:  # primitives only: a composite's inputs are its parts'
            for pcoll in transform.inputs.values():
                consumers.setdefault(pcoll, set()).add(name)
    flattens = [t for t in transforms.values() if t.spec.urn == common_urns.primitives.FLATTEN.urn]
    return [pcoll for t in flattens for pcoll in t.inputs.values() if len(consumers[pcoll]) > 1]


def _issue_34647_shape(flatten) -> beam.Pipeline:
    pipeline = beam.Pipeline("FnApiRunner")
    side1 = pipeline | "Side1" >> beam.Create([("a", 1)])
    side2 = pipeline | "Side2" >> beam.Create([("b", 2)])
    merged = (side1, side2) | "Merge" >> flatten
    grouped = side1 | "Group" >> beam.GroupByKey()
    assert_that(merged, equal_to([("a", 1), ("b", 2)]), label="CheckMerged")
    assert_that(grouped | beam.MapTuple(lambda k, v: (k, list(v))), equal_to([("a", [1])]), label="CheckGrouped")
    return pipeline


def test_flatten_apart_gives_the_union_and_shares_no_input():
    assert _shared_flatten_inputs(_issue_34647_shape(beam.Flatten()))  # the shape the job servers reject
    pipeline = _issue_34647_shape(FlattenApart())
    assert _shared_flatten_inputs(pipeline) == []
    pipeline.run().wait_until_finish()


def test_flatten_apart_takes_one_input():
    with beam.Pipeline("FnApiRunner") as pipeline:
        one = pipeline | beam.Create([1, 2])
        assert_that([one] | "One" >> FlattenApart(), equal_to([1, 2]))


def test_the_jobs_flatten_only_apart():
    """Every Flatten of the jobs goes through FlattenApart (a bare one would fail on Flink and Spark)."""
    bare = [f"{path.name}:{n}" for path in sorted(BEAM_JOBS.glob("*.py")) if path.name != "flatten.py"
            for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bbeam\.Flatten\b", line)]
    assert bare == []
