"""Batch video annotation: DenseNet121 frame features + a small Transformer, as Apache Beam pipelines.

Workers of a distributed runner install this package from `--setup_file ./setup.py`.
"""

import setuptools

# Installed and tested together (Python 3.11). Keep in step with the Makefile's install.
REQUIRED = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "apache-beam[gcp]==2.77.0",
    "opencv-python-headless==5.0.0.93",
    "numpy==2.4.6",
    "google-cloud-storage==3.17.1",
    "matplotlib==3.11.2",
    "pillow==12.3.0",
]

EXTRAS = {
    "test": [
        "pytest==9.2.0",
        # A local Cloud Storage server for the gs:// tests (tests/test_gcs.py).
        "gcp-storage-emulator==2026.7.19",
    ],
}

setuptools.setup(
    name="video-annotation",
    version="0.1.0",
    description="Batch video labelling with DenseNet121 features and a Transformer classifier on Apache Beam",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["beam_jobs", "beam_jobs.*", "model", "model.*",
                                                "tfrecords_schema", "tfrecords_schema.*"]),
    install_requires=REQUIRED,
    extras_require=EXTRAS,
)
