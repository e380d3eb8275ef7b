"""The DenseNet121 frame embedder, the video Transformer classifier, training, evaluation and export."""
