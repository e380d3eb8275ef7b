"""Batch video annotation: DenseNet121 frame features + a small Transformer, as Apache Beam pipelines.

Workers of a distributed runner install this package from `--setup_file ./setup.py`.
"""

import setuptools

# Installed and tested together (Python 3.11). Keep in step with the Makefile's install.
REQUIRED = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "apache-beam[gcp]==2.77.0",
    # Decoding (video/): PyAV, whose wheel bundles FFmpeg (libx264 included, for the benchmark's clips).
    "av==18.1.0",
    # Image work: the report's thumbnails and the sample clip generator.
    "opencv-python-headless==5.0.0.93",
    "numpy==2.4.6",
    "google-cloud-storage==3.17.1",
    "matplotlib==3.11.2",
    "pillow==12.3.0",
    # keras.utils.plot_model's layer graph in the model card (with Graphviz's dot: `make graphviz`).
    "pydot==4.0.1",
    # The CPU engine for DenseNet121 (model.engines) and its int8 calibration (NNCF).
    "openvino==2026.4.1",
    "nncf==3.4.0",
]

EXTRAS = {
    "test": [
        "pytest==9.2.0",
        # `make test` runs the suite's files on two worker processes (a file stays on one worker).
        "pytest-xdist==3.8.0",
        # A local Cloud Storage server for the gs:// tests (tests/test_gcs.py).
        "gcp-storage-emulator==2026.7.19",
        # Mutation testing (`make mutants`, tools/mutants.py); not needed by `make test`.
        "mutmut==3.8.1",
    ],
}

setuptools.setup(
    name="video-annotation",
    version="0.1.0",
    description="Batch video labelling with DenseNet121 features and a Transformer classifier on Apache Beam",
    python_requires=">=3.11,<3.12",
    # tools/ (the sample-clip generator) and bench/ run from a checkout; workers need neither.
    packages=setuptools.find_packages(include=["common", "common.*", "video", "video.*", "tfrecords_schema",
                                                "tfrecords_schema.*", "model", "model.*", "beam_jobs",
                                                "beam_jobs.*"]),
    install_requires=REQUIRED,
    extras_require=EXTRAS,
)
