"""What every command-line entry point shares: user mistakes end as one clear line, not a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (a missing path, an empty glob, a mismatched model): one line on stderr."""


def quiet_tensorflow() -> None:
    """Import TensorFlow now, without its native start-up notes on stderr (see tfrecords_schema._quiet)."""
    from tfrecords_schema._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()


def main(run: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run `run(argv)` as a command: INFO logging, and exit status 2 with one stderr line on a UserError.

    Errors of the record contract (`tfrecords_schema.RecordError`) are user mistakes too: they mean the
    records given do not fit together or with the model.
    """
    from tfrecords_schema import RecordError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Beam's type-hint conversion notes are noise at INFO.
    logging.getLogger("apache_beam.typehints").setLevel(logging.WARNING)
    try:
        run(argv)
    except (UserError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
