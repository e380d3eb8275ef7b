"""Apache Beam pipelines: `featurize` (videos -> feature records) and `predict` (videos -> label CSVs)."""

import os as _os

# TensorFlow's C++ start-up notes (no GPU found, CPU features) are noise for users of these jobs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
