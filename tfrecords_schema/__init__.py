"""The feature-record contract shared by the featurize job, training and the labelling job."""


from tfrecords_schema._quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from tfrecords_schema.dataset import (  # noqa: E402
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
from tfrecords_schema.schema import (  # noqa: E402
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
