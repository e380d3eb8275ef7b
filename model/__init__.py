"""The DenseNet121 frame embedder, the video Transformer classifier, training, evaluation and export."""

from tfrecords_schema._quiet import import_tensorflow_quietly

import_tensorflow_quietly()
