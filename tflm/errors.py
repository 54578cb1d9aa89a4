"""The one base class of every error tflm raises on purpose.

Each error names what is wrong (a config key, a file and line, a tensor) and what to do.
The binaries catch `TflmError` once and print one line: `tflm-<name>: error: <message>`.
Subclasses keep a builtin base too (`ValueError`, `RuntimeError`) so code that caught those
before still does. `assertion_message` reads the message of a failed in-graph check back out
of the text TensorFlow (or TF Serving) wraps it in.
"""

import re

# "assertion failed: [message]", then the condition (assert_equal), the node ("[[...]]") or
# the end of the text.
_ASSERTION = re.compile(r"assertion failed: \[(.*?)\](?= \[Condition|\s*\[\[|\s*$)", re.S)
# The C escapes the assertion writes its message with.

_C_ESCAPE = re.compile(rb"\\([0-7]{1,3}|x[0-9a-fA-F]{2}|[ntr\\'\"?abfv])")
_C_SIMPLE = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\", b"'": b"'", b'"': b'"',
             b"?": b"?", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"v": b"\v"}



class TflmError(Exception):
    """Base of tflm's errors; the message names the key, file or tensor at fault."""


class MissingFileError(TflmError, FileNotFoundError):
    """A file or folder that the job needs does not exist; the message names it."""


class BadFileError(TflmError, ValueError):
    """A file exists but cannot be used (not UTF-8, not JSON, a broken vocabulary...);
    the message names the file and, where it can, the line or entry."""


class OutputExistsError(TflmError, FileExistsError):
    """An output folder exists and is not empty; tflm never overwrites one."""


def assertion_message(text):
    """The message of a failed in-graph assertion (`tf.debugging.Assert`, `assert_equal`),
    as it was written, from the text of the error that carried it (a TensorFlow error's, or
    the details TF Serving returns); None if `text` holds none.

    The assertion C-escapes its message (quotes, backslashes, and bytes as octal where it
    does): the escapes are undone, and the bytes read as UTF-8.
    """
    match = _ASSERTION.search(text or "")
    if match is None:
        return None
    escaped = match.group(1).encode("utf-8")
    return _C_ESCAPE.sub(_unescape, escaped).decode("utf-8", "replace")


def _unescape(match):
    code = match.group(1)
    if code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    return _C_SIMPLE[code]
