"""The model directory: written, loaded (also in a fresh process), served, identified, and checked."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from model.classifier import ClassifierConfig, build_classifier
from common.errors import UserError
from model.export import (
    LABELS_FILE,
    MODEL_FILE,
    PREPROCESSING_FILE,
    SAVED_MODEL_DIR,
    LoadedModel,
    export_model_dir,
    load_model_dir,
    model_id,
)
from tfrecords_schema import RecordSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["CricketShot", "Punch", "TennisSwing"]
SPEC = RecordSpec(feature_dim=16, max_seq_length=8, backbone_id="densenet121/random-0", image_size=224)


def inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, 8, 16)).astype("float32")
    mask = np.arange(8)[None, :] < rng.integers(1, 9, size=(batch, 1))
    features[~mask] = 0.0
    return features, mask


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model")
    model = build_classifier(ClassifierConfig(num_classes=3, max_seq_length=8, feature_dim=16))
    export_model_dir(model, LABELS, SPEC, path)
    features, mask = inputs()
    return path, model.predict_on_batch({"features": features, "mask": mask})


def test_directory_layout(model_dir):
    path, _ = model_dir
    assert sorted(os.listdir(path)) == sorted([MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE, SAVED_MODEL_DIR])
    with open(os.path.join(path, LABELS_FILE)) as f:
        assert f.read().splitlines() == LABELS
    with open(os.path.join(path, PREPROCESSING_FILE)) as f:
        assert json.load(f) == dataclasses.asdict(SPEC)
    assert os.path.exists(os.path.join(path, SAVED_MODEL_DIR, "saved_model.pb"))


def test_load_gives_the_same_model(model_dir):
    path, expected = model_dir
    loaded = load_model_dir(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.labels == LABELS
    assert loaded.spec == SPEC
    assert loaded.path == path
    assert loaded.model_id == model_id(path)
    features, mask = inputs()
    np.testing.assert_array_equal(loaded.model.predict_on_batch({"features": features, "mask": mask}), expected)
    called = loaded.model({"features": features, "mask": mask}, training=False)
    np.testing.assert_allclose(np.asarray(called), expected, rtol=1e-6, atol=1e-7)


def test_load_in_a_fresh_process_gives_identical_outputs(model_dir, tmp_path):
    path, expected = model_dir
    features, mask = inputs()
    np.savez(tmp_path / "inputs.npz", features=features, mask=mask)
    script = textwrap.dedent(f"""
        import numpy as np
        from model.export import load_model_dir
        data = np.load({str(tmp_path / "inputs.npz")!r})
        loaded = load_model_dir({path!r})
        out = loaded.model.predict_on_batch({{"features": data["features"], "mask": data["mask"]}})
        np.save({str(tmp_path / "outputs.npy")!r}, out)
        print(loaded.model_id)
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "outputs.npy"), expected)
    assert done.stdout.strip() == model_id(path)


def test_saved_model_serves_the_same_probabilities(model_dir):
    path, expected = model_dir
    serving = tf.saved_model.load(os.path.join(path, SAVED_MODEL_DIR)).signatures["serving_default"]
    features, mask = inputs()
    outputs = serving(features=tf.constant(features), mask=tf.constant(mask))
    np.testing.assert_allclose(outputs["label_probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_saved_model_signature_names_its_inputs_and_output_as_the_card_does(model_dir):
    """What a TF Serving client sees: `features` and `mask` in, `label_probabilities` out (not `output_0`)."""
    path, expected = model_dir
    serving = tf.saved_model.load(os.path.join(path, SAVED_MODEL_DIR)).signatures["serving_default"]
    _, inputs_spec = serving.structured_input_signature
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in inputs_spec.items()} == {
        "features": (tf.float32, [None, SPEC.max_seq_length, SPEC.feature_dim]),
        "mask": (tf.bool, [None, SPEC.max_seq_length])}
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in serving.structured_outputs.items()} == {
        "label_probabilities": (tf.float32, [None, expected.shape[1]])}


def test_model_id_follows_the_content(model_dir, tmp_path):
    path, _ = model_dir
    identifier = model_id(path)
    assert len(identifier) == 16 and int(identifier, 16) >= 0
    copy = str(tmp_path / "copy")
    shutil.copytree(path, copy)
    assert model_id(copy) == identifier
    with open(os.path.join(copy, PREPROCESSING_FILE), "w") as f:
        json.dump({**dataclasses.asdict(SPEC), "image_size": 299}, f)
    assert model_id(copy) != identifier


@pytest.mark.parametrize("missing", [MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE])
def test_load_names_the_missing_file(model_dir, tmp_path, missing):
    copy = str(tmp_path / "copy")
    shutil.copytree(model_dir[0], copy)
    os.remove(os.path.join(copy, missing))
    with pytest.raises(UserError, match=missing.replace(".", r"\.")):
        load_model_dir(copy)


def test_load_refuses_labels_that_do_not_fit_the_model(model_dir, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(model_dir[0], copy)
    with open(os.path.join(copy, LABELS_FILE), "w") as f:
        f.write("a\nb\n")
    with pytest.raises(UserError, match="3 outputs but there are 2 labels"):
        load_model_dir(copy)
    with pytest.raises(UserError, match="does not exist"):
        load_model_dir(str(tmp_path / "nowhere"))


def test_export_refuses_what_would_not_load(tmp_path):
    model = build_classifier(ClassifierConfig(num_classes=3, max_seq_length=8, feature_dim=16))
    with pytest.raises(ValueError, match="sorted"):
        export_model_dir(model, ["b", "a", "c"], SPEC, str(tmp_path / "m"), saved_model=False)
    with pytest.raises(ValueError, match="3 outputs"):
        export_model_dir(model, ["a", "b"], SPEC, str(tmp_path / "m"), saved_model=False)
    with pytest.raises(ValueError, match=r"\(8, 16\) but the records hold \(20, 16\)"):
        export_model_dir(model, LABELS, dataclasses.replace(SPEC, max_seq_length=20), str(tmp_path / "m"),
                         saved_model=False)


def test_remote_paths_go_through_the_filesystem_layer(model_dir):
    # mem:// (tests/memfs.py) stands in for gs://: an object store reached only through common.fs.
    import memfs

    path, expected = model_dir
    remote = "mem://test-export/model"
    model = load_model_dir(path).model
    export_model_dir(model, LABELS, SPEC, remote)
    names = {name[len(remote) + 1:].split("/")[0] for name in memfs.OBJECTS if name.startswith(remote + "/")}
    assert names == {LABELS_FILE, MODEL_FILE, PREPROCESSING_FILE, SAVED_MODEL_DIR}
    assert remote + "/saved_model/saved_model.pb" in memfs.OBJECTS
    loaded = load_model_dir(remote)
    assert loaded.model_id == model_id(remote) and loaded.path == remote
    features, mask = inputs()
    np.testing.assert_array_equal(loaded.model.predict_on_batch({"features": features, "mask": mask}), expected)
