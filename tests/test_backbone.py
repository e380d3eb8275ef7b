"""model.backbone: seeded random DenseNet121 weights that depend on the seed alone (across processes and
threads), the backbone ids, and the TensorFlow embedder's shapes."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from model.backbone import (
    BackboneWeights,
    FrameEmbedder,
    build_densenet,
    resolve_weights,
    weights_for_backbone_id,
)

IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parents[1]

# Builds the network in a fresh interpreter and prints the digest of its weights and features.
CHILD = """
import hashlib, sys
import numpy as np
from model.backbone import FrameEmbedder, resolve_weights
embedder = FrameEmbedder(resolve_weights(sys.argv[1]), int(sys.argv[2]))
frames = np.random.default_rng(0).integers(0, 256, (3, int(sys.argv[2]), int(sys.argv[2]), 3), np.uint8)
np.save(sys.argv[3], embedder(frames))
sha = hashlib.sha256()
for v in embedder._model.weights:
    sha.update(np.asarray(v.numpy()).tobytes())
print(sha.hexdigest())
"""


def weights_digest(model) -> str:
    sha = hashlib.sha256()
    for variable in model.weights:
        sha.update(np.asarray(variable.numpy()).tobytes())
    return sha.hexdigest()


def frames(count=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def test_separate_processes_build_the_same_random_network(tmp_path):
    """Two fresh interpreters, started together, build bit-identical weights and features from the seed."""
    children = [subprocess.Popen([sys.executable, "-c", CHILD, "random:5", str(IMAGE_SIZE), str(tmp_path / f"{i}.npy")],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for i in range(2)]
    digests = [child.communicate(timeout=300)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert digests[0] == digests[1] and len(digests[0]) == 64
    first, second = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert first.shape == (3, 1024)
    np.testing.assert_array_equal(first, second)
    # And this process, whose global random state is elsewhere, builds the same network too.
    np.random.seed(99)
    random.seed(99)
    here = build_densenet(BackboneWeights("random", seed=5), IMAGE_SIZE)
    assert weights_digest(here) == digests[0]


def test_threads_building_at_once_get_the_same_network_whatever_the_global_seed():
    """Keras's global seed, reset meanwhile by another thread, does not reach the seeded build."""
    import keras

    digests, stop = [], threading.Event()

    def build():
        digests.append(weights_digest(build_densenet(BackboneWeights("random", seed=11), IMAGE_SIZE)))

    def meddle():
        seed = 0
        while not stop.is_set():
            keras.utils.set_random_seed(seed)
            np.random.random(1000)
            seed += 1

    meddler = threading.Thread(target=meddle)
    builders = [threading.Thread(target=build) for _ in range(3)]
    meddler.start()
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    stop.set()
    meddler.join()
    assert len(digests) == 3 and len(set(digests)) == 1


def test_a_different_seed_gives_different_features_and_the_weights_follow_keras_initializers():
    a = build_densenet(BackboneWeights("random", seed=1), IMAGE_SIZE)
    b = build_densenet(BackboneWeights("random", seed=2), IMAGE_SIZE)
    assert weights_digest(a) != weights_digest(b)
    x = frames().astype("float32") / 255.0
    fa, fb = a(x, training=False).numpy(), b(x, training=False).numpy()
    cosine = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert fa.shape == (3, 1024) and np.isfinite(fa).all() and cosine.max() < 0.999
    # Glorot uniform kernels within +-sqrt(6 / (fan_in + fan_out)); BatchNorm as Keras starts it.
    conv = a.get_layer("conv1_conv").kernel.numpy()  # [7, 7, 3, 64]
    limit = np.sqrt(6.0 / (49 * 3 + 49 * 64))
    assert np.abs(conv).max() <= limit and np.abs(conv).max() > 0.9 * limit
    assert abs(conv.std() - limit / np.sqrt(3)) < 0.05 * limit
    bn = a.get_layer("conv1_bn")
    assert (bn.gamma.numpy() == 1).all() and (bn.beta.numpy() == 0).all()
    assert (bn.moving_mean.numpy() == 0).all() and (bn.moving_variance.numpy() == 1).all()


def test_backbone_ids_and_weights_round_trip():
    assert resolve_weights("random").backbone_id == "densenet121/random-seed1337"
    assert resolve_weights("random:42").backbone_id == "densenet121/random-seed42"
    assert resolve_weights("random:42").flag == "random:42"
    assert weights_for_backbone_id("densenet121/random-seed42") == BackboneWeights("random", seed=42)
    # The int8 suffix says how features were computed; the weights are the same network's.
    assert weights_for_backbone_id("densenet121/random-seed42+int8") == BackboneWeights("random", seed=42)
    assert weights_for_backbone_id("densenet121/imagenet+int8") == BackboneWeights("imagenet")
    with pytest.raises(UserError, match="whole-number seed"):
        resolve_weights("random:x")
    with pytest.raises(UserError, match="unknown backbone"):
        weights_for_backbone_id("resnet50/imagenet")


def test_imagenet_weights_that_cannot_be_downloaded_stop_featurize_with_one_line(tmp_path, monkeypatch):
    import keras

    from beam_jobs import featurize

    def offline(*args, **kwargs):  # what Keras raises without a network (nothing is downloaded here)
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.avi").write_bytes(b"not read")
    with pytest.raises(UserError) as error:
        featurize.run(["--input", str(tmp_path / "clips"), "--output", str(tmp_path / "out"), "--weights", "imagenet"])
    message = str(error.value)
    assert message.startswith("could not download the ImageNet DenseNet121 weights (Exception: URL fetch failure")
    assert "--weights PATH" in message and "--weights random" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # stopped before touching the output


def test_frame_embedder_says_what_it_is_and_checks_its_input():
    embedder = FrameEmbedder(resolve_weights("random:3"), IMAGE_SIZE)
    assert (embedder.engine, embedder.precision, embedder.calibration) == ("tensorflow", "f32", "")
    assert embedder.backbone_id == "densenet121/random-seed3" and embedder.engine_version
    features = embedder(frames(5))
    assert features.shape == (5, 1024) and features.dtype == np.float32
    np.testing.assert_allclose(embedder(frames(5)[2:3]), features[2:3], rtol=1e-5, atol=1e-6)
    assert embedder(frames(0)).shape == (0, 1024)
    with pytest.raises(ValueError, match=r"uint8 \[N, 32, 32, 3\]"):
        embedder(frames(2).astype(np.float32))
