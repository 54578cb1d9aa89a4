"""The one base class of every error tflm raises on purpose.

Each error names what is wrong (a config key, a file and line, a tensor) and what to do.
The binaries catch `TflmError` once and print one line: `tflm-<name>: error: <message>`.
Subclasses keep a builtin base too (`ValueError`, `RuntimeError`) so code that caught those
before still does.
"""


class TflmError(Exception):
    """Base of tflm's errors; the message names the key, file or tensor at fault."""


class MissingFileError(TflmError, FileNotFoundError):
    """A file or folder that the job needs does not exist; the message names it."""


class BadFileError(TflmError, ValueError):
    """A file exists but cannot be used (not UTF-8, not JSON, a broken vocabulary...);
    the message names the file and, where it can, the line or entry."""


class OutputExistsError(TflmError, FileExistsError):
    """An output folder exists and is not empty; tflm never overwrites one."""
