"""The classifier: reference shape and size, serializable layers, padding that never reaches the output."""

import dataclasses

import keras
import numpy as np
import pytest

from model.averaging import AveragingAdam
from model.classifier import (
    ClassifierConfig,
    MaskedGlobalMaxPooling,
    PositionalEmbedding,
    TransformerEncoder,
    attention_key_dim,
    build_classifier,
    classifier_config_of,
    compile_classifier,
)

SMALL = ClassifierConfig(num_classes=3, max_seq_length=8, feature_dim=16)


def small_inputs(num_valid_frames=(8, 5, 3, 1), seed=0):
    """Features [B, 8, 16] with padded rows zeroed (as records store them) and the matching mask [B, 8]."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(num_valid_frames), 8, 16)).astype("float32")
    mask = np.arange(8)[None, :] < np.array(num_valid_frames)[:, None]
    features[~mask] = 0.0
    return features, mask


def test_config_defaults_are_the_reference_values():
    config = ClassifierConfig(num_classes=5)
    assert (config.max_seq_length, config.feature_dim, config.dense_dim, config.num_heads) == (20, 1024, 4, 1)
    assert (config.attention_dropout, config.head_dropout) == (0.3, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_classes = 6


@pytest.mark.parametrize("changes", [{"num_classes": 1}, {"feature_dim": 0}, {"head_dropout": 1.0},
                                     {"attention_dropout": -0.1}, {"num_heads": 3}])
def test_config_rejects_bad_values(changes):
    with pytest.raises(ValueError):
        ClassifierConfig(**{"num_classes": 5, **changes})


def test_parameter_count_is_the_reference_models():
    model = build_classifier(ClassifierConfig(num_classes=5))
    per_layer = {layer.name: layer.count_params() for layer in model.layers}
    # 20 frames x 1024 learned position vectors.
    assert per_layer["frame_position_embedding"] == 20 * 1024
    # Attention: 4 x (1024 x 1024 + 1024); dense 1024->4->1024; two LayerNorms.
    assert per_layer["transformer_layer"] == 4 * (1024 * 1024 + 1024) + (1024 * 4 + 4) + (4 * 1024 + 1024) + 2 * 2048
    assert per_layer["label_probabilities"] == 1024 * 5 + 5
    # The keras-io reference model, built as published, also counts 4,237,321 weights. Issue 3 quotes
    # 4,216,841: the same count without the positional embedding's 20,480.
    assert model.count_params() == 4_237_321
    assert model.count_params() - per_layer["frame_position_embedding"] == 4_216_841


def test_heads_share_the_feature_dim_so_the_weight_count_stays():
    one, eight = (build_classifier(ClassifierConfig(num_classes=5, num_heads=heads)) for heads in (1, 8))
    assert eight.count_params() == one.count_params() == 4_237_321
    attention = eight.get_layer("transformer_layer").attention
    assert (attention.num_heads, attention.key_dim) == (8, 128)
    assert one.get_layer("transformer_layer").attention.key_dim == 1024
    assert classifier_config_of(eight).num_heads == 8


def test_heads_must_divide_the_feature_dim_everywhere():
    assert (attention_key_dim(1024, 8), attention_key_dim(16, 16), attention_key_dim(16, 1)) == (128, 1, 16)
    message = r"num_heads must divide feature_dim \(16\), got 3"
    with pytest.raises(ValueError, match=message):
        attention_key_dim(16, 3)
    with pytest.raises(ValueError, match=message):
        TransformerEncoder(feature_dim=16, dense_dim=4, num_heads=3, dropout=0.0)
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(num_classes=2, feature_dim=16, num_heads=3)


def test_outputs_are_probabilities_over_the_classes():
    model = build_classifier(SMALL)
    features, mask = small_inputs()
    probabilities = model.predict_on_batch({"features": features, "mask": mask})
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert set(model.input) == {"features", "mask"}


def test_padding_never_influences_the_output():
    model = build_classifier(SMALL)
    features, mask = small_inputs()
    before = model.predict_on_batch({"features": features, "mask": mask})
    noisy = features.copy()
    noisy[~mask] = np.random.default_rng(1).normal(scale=100.0, size=((~mask).sum(), 16))
    after = model.predict_on_batch({"features": noisy, "mask": mask})
    np.testing.assert_array_equal(before, after)
    called = model({"features": noisy, "mask": mask}, training=False).numpy()
    np.testing.assert_allclose(called, before, rtol=1e-6, atol=1e-7)
    # A real frame, unlike padding, does count.
    changed = features.copy()
    changed[1, 0] += 5.0
    assert not np.allclose(model.predict_on_batch({"features": changed, "mask": mask})[1], before[1])


def test_frame_order_matters():
    model = build_classifier(SMALL)
    features, mask = small_inputs(num_valid_frames=(8, 6))
    reversed_features = features.copy()
    reversed_features[0] = features[0, ::-1]
    reversed_features[1, :6] = features[1, 5::-1]
    before = model.predict_on_batch({"features": features, "mask": mask})
    after = model.predict_on_batch({"features": reversed_features, "mask": mask})
    assert not np.allclose(before, after)


def test_masked_max_pool_skips_padding():
    values = np.array([[[1.0, -3.0], [5.0, 2.0], [9.0, 9.0]]], "float32")  # [1, 3 frames, 2]
    mask = np.array([[True, True, False]])
    pooled = MaskedGlobalMaxPooling()(values, mask=mask).numpy()
    np.testing.assert_array_equal(pooled, [[5.0, 2.0]])
    empty = MaskedGlobalMaxPooling()(values, mask=np.zeros((1, 3), bool)).numpy()
    np.testing.assert_array_equal(empty, [[0.0, 0.0]])


@pytest.mark.parametrize(
    "layer",
    [
        PositionalEmbedding(max_seq_length=8, feature_dim=16, name="positions"),
        TransformerEncoder(feature_dim=16, dense_dim=4, num_heads=2, dropout=0.25, name="encoder"),
        MaskedGlobalMaxPooling(name="pool"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trips(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config


def test_model_config_round_trips_through_the_layers():
    model = build_classifier(SMALL)
    assert classifier_config_of(model) == SMALL
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert classifier_config_of(clone) == SMALL


def test_compile_uses_adam_and_sparse_cross_entropy():
    model = compile_classifier(build_classifier(SMALL), learning_rate=0.005)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.005)
    features, mask = small_inputs()
    result = model.evaluate({"features": features, "mask": mask}, np.array([0, 1, 2, 0]), verbose=0,
                            return_dict=True)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] > 0


def test_a_momentum_compiles_the_averaging_optimizer():
    model = compile_classifier(build_classifier(SMALL), learning_rate=0.01, ema_momentum=0.99)
    assert type(model.optimizer) is AveragingAdam
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == pytest.approx(0.99)
    features, mask = small_inputs()
    model.train_on_batch({"features": features, "mask": mask}, np.array([0, 1, 2, 0]))
    # The first step copies the weights into the averages (see tests/test_averaging.py for the warm-up).
    for average, weight in zip(model.optimizer._model_variables_moving_average, model.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(average), keras.ops.convert_to_numpy(weight))


def test_without_momentum_there_is_no_average():
    model = compile_classifier(build_classifier(SMALL))
    assert type(model.optimizer) is keras.optimizers.Adam and not model.optimizer.use_ema
