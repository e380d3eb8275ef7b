"""The errors a command turns into one line on stderr and a meaningful exit status, instead of a traceback.

Exit statuses (sysexits.h where one fits), for schedulers and scripts:

    0    finished
    2    a user mistake: bad flags, missing inputs, records that do not fit the model (UserError)
    65   a file the run needs is corrupt or truncated (a model file)            (EX_DATAERR)
    73   the output cannot be created: its path is a file                        (EX_CANTCREAT)
    74   an I/O error: disk full, read-only filesystem, I/O error                (EX_IOERR)
    75   skipped: another run holds the output's lease; try again later          (EX_TEMPFAIL)
    77   permission denied                                                       (EX_NOPERM)
    130  interrupted (Ctrl-C)
    1    anything else is a bug: it keeps its traceback
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_DATA_ERROR = 65
EXIT_CANNOT_CREATE = 73
EXIT_IO_ERROR = 74
EXIT_LEASE_HELD = 75
EXIT_NO_PERMISSION = 77
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix (a missing path, an empty glob, a mismatched model): one line, exit 2."""

    exit_code = EXIT_USER_ERROR


class OperationalError(Exception):
    """The environment, not the code, failed (disk full, a corrupt model file): one line, `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_IO_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


class LeaseHeld(OperationalError):
    """Another live run holds the output: this run is skipped (exit 75, "try again later")."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_LEASE_HELD)


class LeaseLost(OperationalError):
    """This run's lease was taken over while it ran (it stalled past the lease's expiry): it must not publish."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_LEASE_HELD)
