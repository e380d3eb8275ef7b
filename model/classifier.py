"""The video classifier: frame features -> one Transformer encoder block -> label probabilities.

A clean port of the maths of the keras-io "Video Classification with Transformers" model, with the padding
handled explicitly: the model takes the frame features and the frame mask of a feature record and padded
frames never reach the output (attention ignores them as keys, max pooling skips them).

    model = build_classifier(ClassifierConfig(num_classes=5))
    compile_classifier(model, learning_rate=1e-3)
    probabilities = model.predict_on_batch({"features": f, "mask": m})  # [B, T, D], [B, T] -> [B, 5]

With the reference values (20 frames of 1024-d features) and 5 classes the model has 4,237,321 weights:
20,480 in the positional embedding, 4,211,716 in the encoder block and 5,125 in the output layer. The
attention's key_dim is feature_dim / num_heads, so any number of heads has that same count; the reference
has one head (key_dim = feature_dim), and `model.train` trains with 8 by default.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from model.averaging import AveragingAdam

FEATURES_INPUT = "features"
MASK_INPUT = "mask"
OUTPUT_NAME = "label_probabilities"


def attention_key_dim(feature_dim: int, num_heads: int) -> int:
    """The key_dim of each attention head: the heads share feature_dim between them, as in "Attention Is All
    You Need", so the weight count does not depend on num_heads. ValueError unless num_heads divides it."""
    if feature_dim % num_heads:
        raise ValueError(f"num_heads must divide feature_dim ({feature_dim}), got {num_heads}")
    return feature_dim // num_heads


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Hyperparameters of the classifier; the defaults are the reference model's."""

    num_classes: int
    max_seq_length: int = 20
    feature_dim: int = 1024
    dense_dim: int = 4
    num_heads: int = 1
    attention_dropout: float = 0.3
    head_dropout: float = 0.5

    def __post_init__(self):
        for name in ("num_classes", "max_seq_length", "feature_dim", "dense_dim", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        attention_key_dim(self.feature_dim, self.num_heads)
        for name in ("attention_dropout", "head_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@keras.saving.register_keras_serializable(package="video_annotation")
class PositionalEmbedding(layers.Layer):
    """Adds a learned vector per frame index to the frame features.

    Input `[batch, frames, feature_dim]` with `frames <= max_seq_length`; output has the same shape.
    """

    def __init__(self, max_seq_length: int, feature_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.max_seq_length = max_seq_length
        self.feature_dim = feature_dim

    def build(self, input_shape):
        frames, dim = input_shape[-2], input_shape[-1]
        if dim is not None and dim != self.feature_dim:
            raise ValueError(f"frame features must be [T, {self.feature_dim}], got {tuple(input_shape[1:])}")
        if frames is not None and frames > self.max_seq_length:
            raise ValueError(f"at most {self.max_seq_length} frames are supported, got {frames}")
        # The initializer of keras.layers.Embedding, which the reference uses for the same table.
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_seq_length, self.feature_dim),
            initializer="uniform",
        )

    def call(self, features):
        frames = ops.shape(features)[1]
        return features + ops.cast(self.position_embeddings[:frames], features.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_seq_length": self.max_seq_length, "feature_dim": self.feature_dim})
        return config


@keras.saving.register_keras_serializable(package="video_annotation")
class TransformerEncoder(layers.Layer):
    """One post-norm Transformer encoder block over frames.

    Self-attention (`num_heads` heads of key_dim feature_dim / num_heads) -> residual + LayerNorm -> dense
    feature_dim -> dense_dim (gelu) -> feature_dim -> residual + LayerNorm.

    Call with `inputs` `[batch, frames, feature_dim]` and `mask` `[batch, frames]` bool (True = real frame);
    returns `[batch, frames, feature_dim]`. Padded frames are never attended to, so the outputs at real
    frames do not depend on them; the outputs at padded frames are meaningless and must be masked later.
    """

    def __init__(self, feature_dim: int, dense_dim: int, num_heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        # The mask is passed explicitly; declaring support keeps Keras from warning that it is dropped.
        self.supports_masking = True
        self.feature_dim = feature_dim
        self.dense_dim = dense_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention = layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=attention_key_dim(feature_dim, num_heads), dropout=dropout, name="attention"
        )
        self.dense_in = layers.Dense(dense_dim, activation="gelu", name="dense_in")
        self.dense_out = layers.Dense(feature_dim, name="dense_out")
        self.layernorm_attention = layers.LayerNormalization(name="layernorm_attention")
        self.layernorm_dense = layers.LayerNormalization(name="layernorm_dense")

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.layernorm_attention.build(input_shape)
        self.dense_in.build(input_shape)
        self.dense_out.build(tuple(input_shape[:-1]) + (self.dense_dim,))
        self.layernorm_dense.build(input_shape)

    def call(self, inputs, mask=None, training=None):
        attention_mask = None
        if mask is not None:
            # [batch, query frame, key frame]: every query may look at every real frame, none at padding.
            mask = ops.cast(mask, "bool")
            attention_mask = ops.logical_and(
                ops.expand_dims(mask, 1), ops.expand_dims(ops.ones_like(mask), 2)
            )
        attended = self.attention(inputs, inputs, attention_mask=attention_mask, training=training)
        hidden = self.layernorm_attention(inputs + attended)
        projected = self.dense_out(self.dense_in(hidden))
        return self.layernorm_dense(hidden + projected)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "feature_dim": self.feature_dim,
                "dense_dim": self.dense_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="video_annotation")
class MaskedGlobalMaxPooling(layers.Layer):
    """Max over real frames: `[batch, frames, channels]` + mask `[batch, frames]` -> `[batch, channels]`.

    Padded frames are skipped. A row without any real frame (which valid records never have) pools to zeros.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.max(inputs, axis=1)
        mask = ops.cast(mask, "bool")
        lowest = ops.full_like(inputs, float("-inf"))
        pooled = ops.max(ops.where(ops.expand_dims(mask, -1), inputs, lowest), axis=1)
        has_frames = ops.expand_dims(ops.any(mask, axis=1), -1)
        return ops.where(has_frames, pooled, ops.zeros_like(pooled))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def compute_mask(self, inputs, mask=None):
        return None  # the time axis is gone, and with it the mask

    def get_config(self):
        return super().get_config()


def build_classifier(config: ClassifierConfig) -> keras.Model:
    """The classifier for `config`, uncompiled.

    Inputs (a dict): `features` `[batch, max_seq_length, feature_dim]` float32 and `mask`
    `[batch, max_seq_length]` bool (True = real frame, False = padding). Output: `[batch, num_classes]`
    softmax probabilities, in the order of the label vocabulary.
    """
    features = keras.Input((config.max_seq_length, config.feature_dim), name=FEATURES_INPUT, dtype="float32")
    mask = keras.Input((config.max_seq_length,), name=MASK_INPUT, dtype="bool")
    x = PositionalEmbedding(config.max_seq_length, config.feature_dim, name="frame_position_embedding")(features)
    x = TransformerEncoder(
        config.feature_dim, config.dense_dim, config.num_heads, config.attention_dropout, name="transformer_layer"
    )(x, mask=mask)
    x = MaskedGlobalMaxPooling(name="masked_max_pool")(x, mask=mask)
    x = layers.Dropout(config.head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(config.num_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model({FEATURES_INPUT: features, MASK_INPUT: mask}, outputs, name="video_classifier")


def compile_classifier(model: keras.Model, learning_rate: float = 1e-3, ema_momentum: float = 0.0) -> keras.Model:
    """Adam, sparse categorical cross-entropy on label ids, accuracy, XLA-compiled steps; returns `model`.

    `ema_momentum` > 0 has Adam keep an exponential moving average of the weights (`use_ema`, warmed up:
    see model.averaging), updated every step; `model.train` validates and keeps those averaged weights.

    XLA is asked for explicitly: Keras's `jit_compile="auto"` turns it off on machines without an
    accelerator, yet for this model it makes a training epoch about 3x faster on a CPU too. (Keras still
    turns it off while TensorFlow's op determinism is on; `model.loop` turns that on only with a GPU.)
    """
    model.compile(
        optimizer=(AveragingAdam(learning_rate=learning_rate, use_ema=True, ema_momentum=ema_momentum)
                   if ema_momentum > 0 else keras.optimizers.Adam(learning_rate=learning_rate)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=True,
    )
    return model


def classifier_config_of(model: keras.Model, num_classes: int | None = None) -> ClassifierConfig:
    """The `ClassifierConfig` a model built by `build_classifier` was built with."""
    embedding = model.get_layer("frame_position_embedding")
    encoder = model.get_layer("transformer_layer")
    return ClassifierConfig(
        num_classes=num_classes or int(model.output_shape[-1]),
        max_seq_length=embedding.max_seq_length,
        feature_dim=embedding.feature_dim,
        dense_dim=encoder.dense_dim,
        num_heads=encoder.num_heads,
        attention_dropout=encoder.dropout,
        head_dropout=float(model.get_layer("head_dropout").rate),
    )
