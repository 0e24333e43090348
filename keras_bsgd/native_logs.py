"""Quiet TensorFlow start-up for the `keras-bsgd` command line.

TensorFlow's C++ code logs while it loads (CUDA probing, CPU features), some
of it through absl before any log level applies, and that must be settled
before TensorFlow is imported. Importing `keras_bsgd` imports TensorFlow, so
the package calls `quiet_for_command_line()` first: it does nothing unless
the process is the command line (`keras-bsgd ...` or
`python -m keras_bsgd ...`) and the user left `TF_CPP_MIN_LOG_LEVEL` unset.
Library users' processes are never touched.
"""

import os
import re
import sys
import tempfile

LEVEL = "TF_CPP_MIN_LOG_LEVEL"

# An absl or TensorFlow C++ log line ("I0000 00:00:17.5 4047 file.cc:31] ..."),
# and the notice absl prints before its logging is initialized.
_NATIVE_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] |"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def is_command_line(argv=None, orig_argv=None):
    """Whether this process runs the `keras-bsgd` command line.

    Args:
        argv: `sys.argv`, or `None` for it. Defaults to `None`.
        orig_argv: `sys.orig_argv`, or `None` for it. Defaults to `None`.

    Returns:
        `True` for `keras-bsgd ...` and `python -m keras_bsgd ...`.

    Example:

    >>> is_command_line(["/venv/bin/keras-bsgd", "compare"], ["python", "x"])
    True
    >>> is_command_line(["-m"], ["python", "-m", "keras_bsgd", "compare"])
    True
    >>> is_command_line(["train.py"], ["python", "train.py"])
    False
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    script = os.path.basename(argv[0]) if argv else ""
    if script in ("keras-bsgd", "keras-bsgd.exe"):
        return True
    return any(
        a == "-m" and b in ("keras_bsgd", "keras_bsgd.cli")
        for a, b in zip(orig_argv, orig_argv[1:])
    )


def drop_native_lines(text):
    """`text` without absl and TensorFlow C++ log lines.

    Example:

    >>> drop_native_lines("I0000 00:00:1796.5  4047 cudart_stub.cc:31] no CUDA\\nkept\\n")
    'kept\\n'
    """
    return "".join(
        line for line in text.splitlines(keepends=True) if not _NATIVE_LINE.match(line)
    )


def import_tensorflow_quietly():
    """Imports TensorFlow and finds its devices with native log lines dropped.

    Sets `TF_CPP_MIN_LOG_LEVEL=2` (warnings and info off) and absl's Python
    verbosity to errors; the absl lines printed while TensorFlow loads and
    probes its devices ignore both, so standard error (file descriptor 2) is
    captured meanwhile and written back without them. Anything else written
    there, a traceback included, is kept.
    """
    os.environ[LEVEL] = "2"
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # Probing the devices logs too.
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(drop_native_lines(captured.read().decode(errors="replace")))
    from absl import logging

    logging.set_verbosity(logging.ERROR)


def quiet_for_command_line():
    """Imports TensorFlow quietly if this is the command line and the user set no log level."""
    if LEVEL in os.environ or not is_command_line() or "tensorflow" in sys.modules:
        return
    import_tensorflow_quietly()
