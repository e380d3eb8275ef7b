"""The feature-record contract shared by the featurize job, training and the labelling job."""

from tfrecords_schema.dataset import (
    VOCABULARY_FILE,
    dataset_spec,
    label_lookup,
    label_problem,
    make_dataset,
    make_decoded_dataset,
    match_record_files,
    parse_vocabulary,
    read_vocabulary,
    to_model_inputs,
    vocabulary_text,
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
    pad_features,
    parse_video_record,
    read_record_spec,
)
