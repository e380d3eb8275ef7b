"""Import TensorFlow without its native start-up notes on stderr.

TensorFlow 2.21's native libraries print "no CUDA drivers", CPU-feature and absl notes on import and on
device initialisation, whatever TF_CPP_MIN_LOG_LEVEL says. They bury the one line a user mistake should
print, so the import and the device scan run with stderr pointed at a temporary file, which is replayed
only if the import fails.
"""

from __future__ import annotations

import os
import sys
import tempfile


def import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # stderr replaced by something without a descriptor
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, fd)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)
