"""Apache Beam pipelines: `featurize` (videos -> feature records) and `predict` (videos -> label CSVs)."""

