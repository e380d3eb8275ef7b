"""The feature-record contract shared by the featurize job, training and the labelling job."""

import os as _os

# TensorFlow's C++ start-up notes (no GPU found, CPU features) are noise for users of these jobs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrecords_schema.dataset import (
    VOCABULARY_FILE,
    dataset_spec,
    label_lookup,
    make_dataset,
    make_decoded_dataset,
    match_record_files,
    read_vocabulary,
    to_model_inputs,
    write_vocabulary,
)
from tfrecords_schema.schema import (
    FEATURE_ENCODINGS,
    SCHEMA_VERSION,
    RecordError,
    RecordSpec,
    VideoRecord,
    decode_video_record,
    encode_video_record,
    parse_video_record,
    read_record_spec,
)
