"""The training run's tf.data pipelines: the split with label ids, epochs whose order is drawn from the seed and
the epoch alone (so resuming reads what an uninterrupted run reads), cache modes that never change it, and
records that break the stream refused with one line."""

import numpy as np
import pytest
import tensorflow as tf

from common.errors import UserError
from model import datasets as datasets_module
from model.data import RecordSet, TrainingData, in_validation_split, load_training_data
from model.datasets import model_datasets, record_errors, resolve_cache
from conftest import RECORD_DIM as DIM, RECORD_FRAMES as FRAMES, make_records, write_records
from test_data import write_manifest


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    written = {"train": make_records(str(root / "train"), per_class=40, seed=1, shards=3),
               "test": make_records(str(root / "test"), per_class=4, seed=3, shards=1)}
    return root, written


def first_values(features):
    """A record's identity: its first feature values (the records of make_records are random)."""
    return tuple(np.round(features[..., 0, :4], 5).ravel())


def epochs_of(datasets, count):
    """The training records of `count` epochs of `datasets.fit`, as lists of identities per epoch."""
    batches = iter(datasets.fit)
    epochs = []
    for _ in range(count):
        epoch = []
        for _ in range(datasets.steps_per_epoch):
            inputs, _ = next(batches)
            epoch += [first_values(f) for f in inputs["features"].numpy()]
        epochs.append(epoch)
    return epochs


def test_the_sets_hold_the_split_with_label_ids(records):
    root, written = records
    data = load_training_data([str(root / "train")], test=[str(root / "test")])
    datasets = model_datasets(data, batch_size=16, seed=3, cache="none")
    by_values = {first_values(r.features): r for r in written["train"]}
    ids = {}
    for name in ("train", "validation"):
        items = list(getattr(datasets, name).as_numpy_iterator())
        assert len(items) == getattr(data, f"num_{name}") == int(getattr(datasets, name).cardinality())
        for inputs, label in items:
            record = by_values[first_values(inputs["features"])]
            assert inputs["features"].shape == (FRAMES, DIM) and inputs["mask"].dtype == bool
            assert inputs["mask"].sum() == record.num_valid_frames and label == ["down", "up"].index(record.label)
        ids[name] = {by_values[first_values(inputs["features"])].video_id for inputs, _ in items}
    all_ids = [r.video_id for r in written["train"]]
    held = in_validation_split(tf.constant(all_ids), 0.15).numpy()
    assert ids["validation"] == {i for i, h in zip(all_ids, held) if h}
    assert ids["train"] == {i for i, h in zip(all_ids, held) if not h}
    assert sorted(int(label) for _, label in datasets.test.as_numpy_iterator()) == [0] * 4 + [1] * 4
    assert datasets.validation_steps == -(-data.num_validation // 16)


def test_every_epoch_reads_each_training_record_once_in_an_order_drawn_from_the_seed_and_epoch(records):
    root, _ = records
    data = load_training_data([str(root / "train")])
    full = model_datasets(data, batch_size=16, seed=3, cache="none", epochs=3)
    assert full.steps_per_epoch == -(-data.num_train // 16)
    epochs = epochs_of(full, 3)
    training = {first_values(inputs["features"]) for inputs, _ in full.train.as_numpy_iterator()}
    for epoch in epochs:
        assert len(epoch) == data.num_train and set(epoch) == training  # each record once
    assert len({tuple(epoch) for epoch in epochs}) == 3  # a new order every epoch
    again = epochs_of(model_datasets(data, batch_size=16, seed=3, cache="none", epochs=3), 3)
    assert again == epochs  # the same seed, the same orders
    # A run resumed after epoch 1 reads epochs 2 and 3 as the uninterrupted run did.
    assert epochs_of(model_datasets(data, batch_size=16, seed=3, cache="none", initial_epoch=1, epochs=3), 2) == \
        epochs[1:]
    assert epochs_of(model_datasets(data, batch_size=16, seed=4, cache="none", epochs=1), 1)[0] != epochs[0]


def test_a_disk_cache_reads_what_the_shards_give(records, tmp_path):
    root, _ = records
    data = load_training_data([str(root / "train")])
    streamed = model_datasets(data, batch_size=16, seed=5, cache="none", epochs=2)
    disk = model_datasets(data, batch_size=16, seed=5, cache="disk", epochs=2, cache_dir=str(tmp_path))
    assert disk.cache == "disk" and epochs_of(disk, 2) == epochs_of(streamed, 2)
    assert {path.name for path in tmp_path.iterdir() if path.name.endswith(".index")} >= {
        f"train-0000{i}.index" for i in range(3)}  # the first epoch wrote each shard's share to disk
    in_order = lambda d: [first_values(x["features"]) for x, _ in d.as_numpy_iterator()]
    assert in_order(disk.validation) == in_order(streamed.validation)
    assert in_order(disk.train) == in_order(streamed.train)


def test_in_memory_every_epoch_is_a_permutation_of_the_whole_share(records):
    root, _ = records
    data = load_training_data([str(root / "train")])
    memory = model_datasets(data, batch_size=16, seed=5, cache="memory", epochs=3)
    streamed = model_datasets(data, batch_size=16, seed=5, cache="none", epochs=1)
    assert memory.cache == "memory" and memory.steps_per_epoch == streamed.steps_per_epoch
    epochs = epochs_of(memory, 3)
    in_order = lambda d: [first_values(x["features"]) for x, _ in d.as_numpy_iterator()]
    assert all(sorted(epoch) == sorted(in_order(streamed.train)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3
    resumed = model_datasets(data, batch_size=16, seed=5, cache="memory", initial_epoch=2, epochs=3)
    assert epochs_of(resumed, 1) == epochs[2:]
    # Scored in the order the shards are read in, as streamed.
    assert in_order(memory.train) == in_order(streamed.train)
    assert in_order(memory.validation) == in_order(streamed.validation)


def test_streamed_epochs_mix_shards_written_a_class_at_a_time(tmp_path, monkeypatch):
    # featurize writes a shard's records in the order of their videos, so a class at a time. Read side by
    # side from their starts, 8 such shards would give 256-record blocks of the first class only; each shard
    # starts elsewhere instead.
    written = make_records(str(tmp_path / "sorted"), per_class=800, seed=1, shards=1)
    by_label = sorted(written, key=lambda r: r.label)
    for i in range(8):  # 100 "down", then 100 "up" in each
        write_records(str(tmp_path / "eight" / f"part{i}"), by_label[i::8], shards=1)
    data = load_training_data([str(tmp_path / "eight" / f"part{i}") for i in range(8)])
    monkeypatch.setattr(datasets_module, "SHUFFLE_BLOCK_BYTES", 1)  # the smallest blocks: MIN_SHUFFLE_BLOCK
    datasets = model_datasets(data, batch_size=32, seed=0, cache="none", epochs=3)
    labels = np.concatenate([batch for _, batch in datasets.fit.as_numpy_iterator()])
    epochs = labels.reshape(3, -1)
    for epoch in epochs:
        assert epoch.sum() == data.class_counts()["train"]["up"]  # every record once
        assert 0.3 < epoch[:datasets_module.MIN_SHUFFLE_BLOCK].mean() < 0.7  # both classes from the start


def test_the_split_is_the_same_with_and_without_a_manifest(tmp_path):
    written = make_records(str(tmp_path / "train"), per_class=30, seed=2, shards=2)
    without = load_training_data([str(tmp_path / "train")])
    write_manifest(str(tmp_path / "train"), written)
    manifested = load_training_data([str(tmp_path / "train")])
    assert manifested.train.counted_from == "manifest.json" and without.train.counted_from == "a counting pass"
    held = [{first_values(x["features"]) for x, _ in model_datasets(d, 8, 0, "none").validation.as_numpy_iterator()}
            for d in (without, manifested)]
    assert held[0] == held[1] and len(held[0]) == without.num_validation == manifested.num_validation


def fake_data(files, num_records=1000):
    spec = make_spec()
    train = RecordSet("training", ("x",), tuple(files), spec, {"a": num_records // 2, "b": num_records // 2})
    return TrainingData(train, None, None, ("a", "b"), 0.15, num_records - 150, 150)


def make_spec():
    from tfrecords_schema import RecordSpec

    return RecordSpec(feature_dim=1024, max_seq_length=20, backbone_id="b", image_size=224)


def test_auto_caches_in_memory_what_fits_the_budget_and_streams_the_rest(monkeypatch):
    local, remote = fake_data(["/records/a.tfrecord"]), fake_data(["gs://bucket/a.tfrecord"])
    assert resolve_cache("auto", local) == resolve_cache("auto", remote) == "memory"  # 1,000 x 82 KB
    monkeypatch.setattr(datasets_module, "MEMORY_CACHE_BUDGET", 10 * 1024**2)
    assert resolve_cache("auto", local) == "none"
    assert resolve_cache("auto", remote) == "disk"  # each epoch would download them again
    assert resolve_cache("none", local) == "none" and resolve_cache("memory", local) == "memory"
    with pytest.raises(UserError, match="--cache must be one of auto, memory, disk, none, got 'ram'"):
        resolve_cache("ram", local)


def test_a_record_that_breaks_the_stream_is_one_line(tmp_path):
    # The manifest says what is in the shards, so nothing reads them before training: a record with other
    # frames is found by the stream, and a shard that changed since it was counted by the epoch's count.
    mixed = make_records(str(tmp_path / "a"), 10, seed=6) + make_records(str(tmp_path / "b"), 1, seed=7, dim=8)
    write_records(str(tmp_path / "mixed"), mixed, shards=1)
    write_manifest(str(tmp_path / "mixed"), mixed)
    data = load_training_data([str(tmp_path / "mixed")], validation_split=0.5)
    with pytest.raises(UserError) as raised, record_errors(data.train.spec):
        for _ in model_datasets(data, batch_size=4, seed=0, cache="none").fit:
            pass
    assert str(raised.value).startswith("training records: a record does not fit the others (feature_dim 16, 8 "
                                        "frames, backbone 'test-net'): ")
    assert "\n" not in str(raised.value) and "function_node" not in str(raised.value)
    more = make_records(str(tmp_path / "more"), 12, seed=6)
    write_records(str(tmp_path / "changed"), more[:20], shards=1)
    write_manifest(str(tmp_path / "changed"), more[:20])
    data = load_training_data([str(tmp_path / "changed")], validation_split=0.5)
    write_records(str(tmp_path / "changed"), more, shards=1)  # rewritten after it was counted
    with pytest.raises(UserError, match=r"^the records do not hold what was counted before training \(manifest.json "
                                        r"or the counting pass\): Input dataset was expected to contain \d+ elements "
                                        r"but contained at least \d+ elements; the shards changed") as raised:
        with record_errors(data.train.spec):
            for _ in model_datasets(data, batch_size=4, seed=0, cache="none").fit:
                pass
    with pytest.raises(UserError, match=r"^training records: the train share holds more than \d+ records, \d+ were "
                                        r"counted before training \(manifest.json\)"):
        model_datasets(data, batch_size=4, seed=0, cache="memory")


def test_a_truncated_shard_is_one_line_with_the_corrupt_file_status(tmp_path):
    from common.errors import EXIT_DATA_ERROR, OperationalError

    written = make_records(str(tmp_path / "train"), 10, seed=6, shards=1)
    write_manifest(str(tmp_path / "train"), written)
    data = load_training_data([str(tmp_path / "train")], validation_split=0.5)
    shard = tmp_path / "train" / "features-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short after it was described
    with pytest.raises(OperationalError, match=r"^a record file is corrupt or truncated: .*truncated") as raised:
        with record_errors(data.train.spec):
            for _ in model_datasets(data, batch_size=4, seed=0, cache="none").fit:
                pass
    assert raised.value.exit_code == EXIT_DATA_ERROR and "\n" not in str(raised.value)
