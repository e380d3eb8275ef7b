"""Training data: counting the records (from manifests, else a pass over their contexts), the vocabulary, the
validation split, and manifests that do not describe their shards."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common.errors import UserError
from model import data as data_module
from model.data import (
    check_labels,
    choose_vocabulary,
    find_vocabulary,
    in_validation_split,
    load_training_data,
    scan_records,
)
from conftest import RECORD_DIM as DIM, RECORD_FRAMES as FRAMES, make_records, write_records
from tfrecords_schema import write_vocabulary
from tfrecords_schema.dataset import MANIFEST_FILE, add_split_counts, split_counts


def write_manifest(directory, records, with_split_counts=True, **changes):
    """A featurize manifest.json (as beam_jobs.featurize writes it, plus the proposed split_counts) for
    `records`, written into `directory` with the shards already there."""
    manifest = {
        "job": "featurize", "records_written": len(records), "labels": sorted({r.label for r in records}),
        "shards": sorted(name for name in os.listdir(directory) if name.endswith(".tfrecord")),
        "record_spec": {"feature_dim": DIM, "max_seq_length": FRAMES, "backbone_id": "test-net", "image_size": 224,
                        "sampling": "uniform", "feature_encoding": "float32", "schema_version": 1},
    }
    if with_split_counts:
        manifest["split_counts"] = split_counts([r.video_id for r in records], [r.label for r in records])
    manifest.update(changes)
    with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    return manifest


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    written = {name: make_records(str(root / name), per_class=per_class, seed=seed, shards=1)
               for name, per_class, seed in (("train", 30, 1), ("validation", 5, 2), ("test", 4, 3))}
    return root, written


def held_out_ids(records, fraction=0.15):
    ids = [r.video_id for r in records]
    return {i for i, held in zip(ids, in_validation_split(tf.constant(ids), fraction).numpy()) if held}


def test_a_counting_pass_counts_every_label_and_the_held_out_share(records):
    root, written = records
    found = scan_records("training", [str(root / "train")], held_out=0.15)
    assert found.name == "training" and found.patterns == (str(root / "train"),)
    assert found.files == (str(root / "train" / "features-00000-of-00001.tfrecord"),)
    assert found.label_counts == {"down": 30, "up": 30} and found.num_records == 60
    held = held_out_ids(written["train"])
    assert found.held_out_counts == {label: sum(i.startswith(label) for i in held) for label in ("down", "up")}
    assert found.counted_from == "a counting pass" and found.example_ids == {"down": "down-1-0", "up": "up-1-0"}
    assert (found.spec.feature_dim, found.spec.max_seq_length, found.spec.backbone_id) == (DIM, FRAMES, "test-net")


def test_the_counting_pass_refuses_records_that_do_not_fit(records, tmp_path):
    root, _ = records
    train = scan_records("training", [str(root / "train")])
    make_records(str(tmp_path / "other"), per_class=1, seed=4, backbone="other-net")
    with pytest.raises(UserError, match=r"^validation records \(.*\) do not match the training records: backbone"):
        scan_records("validation", [str(tmp_path / "other")], train.spec)
    mixed = make_records(str(tmp_path / "a"), 2, seed=6)[:2] + make_records(str(tmp_path / "b"), 2, seed=6, dim=8)
    write_records(str(tmp_path / "mixed"), mixed, shards=1)
    with pytest.raises(UserError) as raised:
        scan_records("training", [str(tmp_path / "mixed")])
    assert str(raised.value) == ("training records: a record does not fit the others (feature_dim 16, 8 frames, "
                                 "backbone 'test-net', image size 224, uniform sampling): video 'down-6-0' has "
                                 "feature_dim 8")


def test_records_of_two_samplings_are_not_trained_together(tmp_path):
    """uniform and keyframes records of the same backbone look alike but hold other frames: refused."""
    import dataclasses

    uniform = make_records(str(tmp_path / "u"), 2, seed=9)
    keyframes = [dataclasses.replace(r, video_id=r.video_id + "-k", sampling="keyframes") for r in uniform[:1]]
    write_records(str(tmp_path / "mixed"), uniform + keyframes, shards=1)
    with pytest.raises(UserError, match=r"^training records: a record does not fit the others \(.*uniform "
                                        r"sampling\): video 'down-9-0-k' has sampling 'keyframes'$"):
        scan_records("training", [str(tmp_path / "mixed")])


def test_the_vocabulary_is_labels_txt_beside_the_records_else_the_labels_found(records, tmp_path):
    root, _ = records
    train = scan_records("training", [str(root / "train")])
    assert find_vocabulary(train.files) is None
    assert choose_vocabulary(train) == ["down", "up"]
    make_records(str(tmp_path / "a"), per_class=1, seed=5)
    write_vocabulary(str(tmp_path / "a" / "labels.txt"), ["up", "down", "left"])
    beside = scan_records("training", [str(tmp_path / "a")])
    assert find_vocabulary(beside.files) == (["down", "left", "up"], str(tmp_path / "a" / "labels.txt"))
    assert choose_vocabulary(beside) == ["down", "left", "up"]
    make_records(str(tmp_path / "b"), per_class=1, seed=6)
    write_vocabulary(str(tmp_path / "b" / "labels.txt"), ["down", "up"])
    with pytest.raises(UserError, match="the training records come with different vocabularies"):
        find_vocabulary(scan_records("training", [str(tmp_path / "a"), str(tmp_path / "b")]).files)


def test_labels_outside_the_vocabulary_are_refused(records):
    root, _ = records
    test = scan_records("test", [str(root / "test")])
    check_labels(test, ["down", "up"])
    with pytest.raises(UserError, match=r"^test record 'up-3-0' has label 'up', which is not in the vocabulary "
                                        r"\(down, left\)$"):
        check_labels(test, ["down", "left"])


def test_the_validation_split_depends_on_the_video_id_only(records, tmp_path):
    root, written = records
    resharded = make_records(str(tmp_path / "resharded"), per_class=30, seed=1, shards=3, order=-1)
    assert held_out_ids(resharded) == held_out_ids(written["train"])
    counts = [scan_records("training", [path], held_out=0.15).held_out_counts
              for path in (str(root / "train"), str(tmp_path / "resharded"))]
    assert counts[0] == counts[1] and sum(counts[0].values()) == len(held_out_ids(resharded))
    many = in_validation_split(tf.constant([f"clip-{i}" for i in range(4000)]), 0.15).numpy()
    assert 0.12 < many.mean() < 0.18


def test_load_counts_every_set(records):
    root, written = records
    split = load_training_data([str(root / "train")], test=[str(root / "test")], validation_split=0.15)
    held = len(held_out_ids(written["train"]))
    assert (split.num_train, split.num_validation, split.num_test) == (60 - held, held, 8)
    assert split.validation is None and split.validation_split == 0.15 and split.vocabulary == ("down", "up")
    counts = split.class_counts()
    assert sum(counts["train"].values()) == 60 - held and sum(counts["validation"].values()) == held
    assert counts["test"] == {"down": 4, "up": 4}
    given = load_training_data([str(root / "train")], [str(root / "validation")], validation_split=0.15)
    assert (given.num_train, given.num_validation, given.num_test) == (60, 10, 0)
    assert given.validation_split == 0.0 and given.test is None
    assert given.class_counts() == {"train": {"down": 30, "up": 30}, "validation": {"down": 5, "up": 5}}


def test_load_refuses_sets_that_do_not_fit_together(records, tmp_path):
    root, _ = records
    with pytest.raises(UserError, match=r"features-00000-of-00001.tfrecord is both a training and a test file"):
        load_training_data([str(root / "train")], test=[str(root / "train")])
    make_records(str(tmp_path / "few"), per_class=1, seed=7, shards=1)
    with pytest.raises(UserError, match=r"--validation-split 0.01 of 2 training videos leaves 2 to train on and "
                                        r"0 to validate on; pass --validation records"):
        load_training_data([str(tmp_path / "few")], validation_split=0.01)
    write_records(str(tmp_path / "one-label"), make_records(str(tmp_path / "x"), 2, seed=8)[:2], shards=1)
    with pytest.raises(UserError, match=r"a classifier needs at least two labels, got \['down'\]"):
        load_training_data([str(tmp_path / "one-label")])


# --- Manifests -----------------------------------------------------------------------------------------


@pytest.fixture
def described(tmp_path):
    """Three shards of 60 records and a manifest with split counts."""
    written = make_records(str(tmp_path / "train"), per_class=30, seed=1, shards=3)
    write_manifest(str(tmp_path / "train"), written)
    return tmp_path / "train", written


def test_a_manifest_with_split_counts_gives_the_counts_without_a_counting_pass(described, monkeypatch):
    directory, written = described
    counted = load_training_data([str(directory)], validation_split=0.15)
    os.rename(directory / MANIFEST_FILE, directory / "aside.json")
    try:
        without = load_training_data([str(directory)], validation_split=0.15)
    finally:
        os.rename(directory / "aside.json", directory / MANIFEST_FILE)

    def no_pass(*args, **kwargs):
        raise AssertionError("the records were counted")

    monkeypatch.setattr(data_module, "count_records", no_pass)
    manifested = load_training_data([str(directory)], validation_split=0.15)
    assert manifested.train.counted_from == MANIFEST_FILE and without.train.counted_from == "a counting pass"
    # The same split with and without the manifest: the same videos held out, the same counts per label.
    assert manifested.class_counts() == without.class_counts() == counted.class_counts()
    assert (manifested.num_train, manifested.num_validation) == (60 - len(held_out_ids(written)),
                                                                 len(held_out_ids(written)))
    # A share between its buckets' bounds is counted instead.
    monkeypatch.undo()
    odd = load_training_data([str(directory)], validation_split=0.125)
    assert odd.train.counted_from == "a counting pass"


def test_split_counts_add_up_over_disjoint_sets(described):
    _, written = described
    first, second = written[:25], written[25:]
    whole = split_counts([r.video_id for r in written], [r.label for r in written])
    parts = add_split_counts(split_counts([r.video_id for r in first], [r.label for r in first]),
                             split_counts([r.video_id for r in second], [r.label for r in second]))
    assert parts == whole and whole["buckets"] == 100 and sum(map(sum, whole["counts"].values())) == 60


def without_counts(manifest):
    """A manifest as today's featurize writes it: no split_counts, so the records are counted and checked."""
    return {"with_split_counts": False, **{k: v for k, v in manifest.items() if k != "split_counts"}}


@pytest.mark.parametrize("change, message", [
    (lambda d, m: os.remove(d / m["shards"][1]),
     r"manifest.json does not describe its shards: features-00001-of-00003.tfrecord is listed but missing "
     r"\(1 of 3 shards missing\)$"),
    (lambda d, m: write_manifest(d, [], shards=m["shards"][:2]),
     r"manifest.json does not describe its shards: it does not list features-00002-of-00003.tfrecord$"),
    (lambda d, m: write_manifest(d, [], **{**without_counts(m), "record_spec": {**m["record_spec"],
                                                                                 "feature_dim": 1024}}),
     r"manifest.json does not describe its shards: feature_dim 16 in the records, 1024 in the manifest$"),
    (lambda d, m: write_manifest(d, [], **{**m, "records_written": 61}),
     r"manifest.json does not add up: its split_counts count 60 records, its records_written 61$"),
    (lambda d, m: write_manifest(d, [], **{**without_counts(m), "records_written": 59}),
     r"manifest.json does not describe its shards: it says 59 records, the shards hold 60$"),
    (lambda d, m: write_manifest(d, [], **{**without_counts(m), "labels": ["down"]}),
     r"manifest.json does not describe its shards: a record in .* has label 'up', which the manifest does not "
     r"list$"),
    (lambda d, m: write_vocabulary(str(d / "labels.txt"), ["down", "left", "up"]),
     r"manifest.json does not describe its shards: its labels differ from .*labels.txt's$"),
])
def test_a_manifest_that_disagrees_with_its_shards_is_refused_with_one_line(described, change, message):
    directory, _ = described
    with open(directory / MANIFEST_FILE) as f:
        manifest = json.load(f)
    change(directory, manifest)
    with pytest.raises(UserError, match=message) as raised:
        load_training_data([str(directory)])
    assert "\n" not in str(raised.value)


def test_a_pattern_that_chooses_some_shards_is_counted(described):
    directory, written = described
    some = load_training_data([str(directory / "features-0000[01]-*.tfrecord")], validation_split=0.15)
    assert some.train.counted_from == "a counting pass" and some.train.num_records == 40


def test_the_manifest_is_the_one_featurize_writes():
    from beam_jobs import outputs

    assert MANIFEST_FILE == outputs.MANIFEST_FILE


def test_with_split_counts_the_manifest_spec_is_checked_on_every_record_as_training_reads_it(described):
    """No record is read before training; a manifest whose spec differs from its records (only the backbone
    here) is refused when the first record is read, in one line."""
    from model.datasets import model_datasets, record_errors

    directory, _ = described
    with open(directory / MANIFEST_FILE) as f:
        manifest = json.load(f)
    write_manifest(directory, [], **{**manifest, "record_spec": {**manifest["record_spec"], "backbone_id": "other"}})
    data = load_training_data([str(directory)], validation_split=0.15)
    assert data.train.counted_from == MANIFEST_FILE and data.train.spec.backbone_id == "other"
    with pytest.raises(UserError, match=r"backbone.*'other'.*test-net") as raised:
        with record_errors(data.train.spec):
            next(iter(model_datasets(data, batch_size=8, seed=0, cache="none", epochs=1).fit))
    assert "\n" not in str(raised.value)


# --- Groups --------------------------------------------------------------------------------------------

UCF_GROUP = r"_g(\d+)_"


def ucf_records(directory, groups, clips=4, seed=0):
    """UCF101-named records: `v_<Label>_g<NN>_c<MM>`, `clips` of each of `groups` per label."""
    import dataclasses

    made = make_records(str(directory), per_class=len(groups) * clips, seed=seed, shards=2)
    renamed = []
    for record in made:
        index = int(record.video_id.rsplit("-", 1)[1])
        group, clip = groups[index // clips], index % clips + 1
        renamed.append(dataclasses.replace(record, video_id=f"{record.label}/v_{record.label}_g{group:02d}_c{clip:02d}"))
    write_records(str(directory), renamed, 2)
    return renamed


def test_split_by_keeps_every_group_on_one_side(tmp_path):
    records = ucf_records(tmp_path / "train", groups=list(range(1, 26)))
    by_group = load_training_data([str(tmp_path / "train")], validation_split=0.3, split_by=UCF_GROUP)
    by_id = load_training_data([str(tmp_path / "train")], validation_split=0.3)
    ids = tf.constant([r.video_id for r in records])
    groups = [r.video_id.split("_g")[1][:2] for r in records]
    for held in (in_validation_split(ids, 0.3, UCF_GROUP).numpy(), in_validation_split(ids, 0.3).numpy()):
        assert 0 < held.sum() < len(records)
    held = in_validation_split(ids, 0.3, UCF_GROUP).numpy()
    # Expected independently: a group is held out when FarmHash64 of its number falls below 30% of the buckets.
    group_held = {g: tf.strings.to_hash_bucket_fast(g, 10_000).numpy() < 3000 for g in set(groups)}
    assert [group_held[g] for g in groups] == held.tolist()
    assert by_group.num_validation == int(held.sum()) and by_group.train.split_by == UCF_GROUP
    by_id_held = in_validation_split(ids, 0.3).numpy()
    assert any(len({h for g2, h in zip(groups, by_id_held) if g2 == g}) == 2 for g in set(groups))  # by id: mixed
    assert by_id.num_validation == int(by_id_held.sum())


def test_the_streamed_held_out_share_is_the_group_split(tmp_path):
    """What training reads as its validation share is the counted one, group by group."""
    from model.datasets import model_datasets

    records = ucf_records(tmp_path / "train", groups=list(range(1, 26)), clips=2)
    data = load_training_data([str(tmp_path / "train")], validation_split=0.3, split_by=UCF_GROUP)
    datasets = model_datasets(data, batch_size=8, seed=0, cache="none", epochs=1)
    # Expected independently: the clips whose group number's FarmHash64 falls below 30% of the buckets.
    held = [tf.strings.to_hash_bucket_fast(r.video_id.split("_g")[1][:2], 10_000).numpy() < 3000 for r in records]
    assert sum(1 for _ in datasets.validation) == sum(held) == data.num_validation
    assert sum(1 for _ in datasets.train) == len(records) - sum(held)


def test_split_counts_by_video_id_are_not_used_for_a_group_split(tmp_path):
    records = ucf_records(tmp_path / "train", groups=list(range(1, 11)), clips=2)
    write_manifest(str(tmp_path / "train"), records)
    by_id = load_training_data([str(tmp_path / "train")], validation_split=0.3)
    by_group = load_training_data([str(tmp_path / "train")], validation_split=0.3, split_by=UCF_GROUP)
    assert by_id.train.counted_from == MANIFEST_FILE and by_group.train.counted_from == "a counting pass"
    write_manifest(str(tmp_path / "train"), records,
                   split_counts=split_counts([r.video_id for r in records], [r.label for r in records],
                                             split_by=UCF_GROUP))
    again = load_training_data([str(tmp_path / "train")], validation_split=0.3, split_by=UCF_GROUP)
    assert again.train.counted_from == MANIFEST_FILE and again.class_counts() == by_group.class_counts()


@pytest.mark.parametrize("split_by, message", [
    ("_g\\d+_", r"--split-by '_g\\\\d\+_' has no group"),
    ("_g(\\d+_", r"--split-by '_g\(\\\\d\+_' is not a regular expression"),
    ("_x(\\d+)_", r"--split-by '_x\(\\\\d\+\)_' matches none of the \d+ training video ids"),
])
def test_a_split_rule_that_cannot_split_is_refused(tmp_path, split_by, message):
    ucf_records(tmp_path / "train", groups=[1, 2, 3])
    with pytest.raises(UserError, match=message):
        load_training_data([str(tmp_path / "train")], split_by=split_by)


def test_sets_sharing_a_video_id_or_a_group_are_refused(tmp_path):
    import dataclasses

    ucf_records(tmp_path / "train", groups=[1, 2, 3, 4, 5, 6])
    ucf_records(tmp_path / "test", groups=[6, 7], seed=5)
    # Another file, the same video ids (v_up_g06_c01 ...): refused whatever the rule.
    with pytest.raises(UserError, match=r"the (training and test|test and training) sets share video id "
                                        r"'(up|down)/v_\w+_g06_c0\d'; a video must be in one set only$"):
        load_training_data([str(tmp_path / "train")], test=[str(tmp_path / "test")])
    ucf_records(tmp_path / "test", groups=[7, 8], seed=5)
    load_training_data([str(tmp_path / "train")], test=[str(tmp_path / "test")])  # apart: fine
    # Other clips of group 06: other ids, so fine by id; by group, refused.
    clips = ucf_records(tmp_path / "scratch", groups=[6], seed=6)
    write_records(str(tmp_path / "validation"),
                  [dataclasses.replace(r, video_id=r.video_id.replace("_c0", "_c1")) for r in clips], 1)
    load_training_data([str(tmp_path / "train")], [str(tmp_path / "validation")])
    with pytest.raises(UserError, match=r"the (training and validation|validation and training) sets share group "
                                        r"'06' \(--split-by _g\(\\d\+\)_\): .*; a group must be in one set only$"):
        load_training_data([str(tmp_path / "train")], [str(tmp_path / "validation")], split_by=UCF_GROUP)


def test_split_buckets_are_tensorflows_hash_buckets_without_tensorflow():
    """The featurize job counts a split's records without TensorFlow (tfrecords_schema.farmhash): every length
    branch of FarmHash's Fingerprint64 (0-16, 17-32, 33-64 bytes, then 64-byte blocks) as TensorFlow hashes."""
    from tfrecords_schema.farmhash import hash_bucket

    rng = np.random.default_rng(7)
    alphabet = list("abcdefghij/_.-0123456789") + ["é", "日", "\n"]
    texts = ["", "a", "é"] + ["".join(rng.choice(alphabet, size=n)) for n in range(1, 200) for _ in range(2)]
    buckets = (1 << 62) + 57  # a large prime-ish modulus: nearly the whole fingerprint is compared
    assert [hash_bucket(t, buckets) for t in texts] == tf.strings.to_hash_bucket_fast(texts, buckets).numpy().tolist()
