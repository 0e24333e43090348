"""`--backend`: the Keras backend of `keras-bsgd compare` and `keras-bsgd bench`.

Keras reads `KERAS_BACKEND` once, when it is imported, and `import
keras_bsgd` imports Keras. So the command line reads `--backend` before
anything else; when the process already runs Keras on another backend it
starts itself again with `KERAS_BACKEND` set (a command line), or refuses
(a call from Python, whose backend is the caller's).
"""

import os
import sys

from keras_bsgd import native_logs

BACKENDS = ("tensorflow", "jax")
"""The backends the tools run on."""

RESTARTED = "KERAS_BSGD_BACKEND_RESTARTED"
"""Set in the environment of a command line started again for `--backend` (no second restart)."""


def pop_backend(argv):
    """`(backend, argv without --backend)`: the `--backend` of `argv`, or `None`.

    Raises:
        ValueError: If the value is missing or not one of `BACKENDS`.
    """
    rest, backend, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--backend" or arg.startswith("--backend="):
            if "=" in arg:
                backend = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                backend, i = argv[i + 1], i + 1
            else:
                backend = ""
            if backend not in BACKENDS:
                raise ValueError(
                    f"--backend must be one of {', '.join(BACKENDS)}. Received: "
                    f"--backend {backend!r}"
                )
        else:
            rest.append(arg)
        i += 1
    return backend, rest


def current():
    """The backend of the Keras this process imported, or `None` before Keras is imported."""
    keras = sys.modules.get("keras")
    return None if keras is None else keras.backend.backend()


def conflict_message(requested, running):
    """Why `--backend requested` cannot run in a process whose Keras runs on `running`."""
    return (
        f"--backend {requested} asked for, but Keras is already imported with the "
        f"{running} backend in this process, and Keras reads KERAS_BACKEND only once. "
        f"Set KERAS_BACKEND={requested} before Python starts (or run the command line "
        f"in a fresh process). Received: --backend {requested}, KERAS_BACKEND="
        f"{os.environ.get('KERAS_BACKEND')!r}"
    )


def select(requested, command_line):
    """Makes `requested` the backend of what follows, if it can.

    Before Keras is imported, sets `KERAS_BACKEND`. After, with another
    backend: a command line (`command_line=True`) replaces this process
    with itself under `KERAS_BACKEND=requested` (`os.execve`; it does not
    return), and a call from Python raises.

    Raises:
        RuntimeError: If Keras already runs on another backend and the
            process cannot start again.
    """
    running = current()
    if running is None:
        os.environ["KERAS_BACKEND"] = requested
        return
    if running == requested:
        return
    if not command_line or os.environ.get(RESTARTED):
        raise RuntimeError(conflict_message(requested, running))
    env = {**os.environ, "KERAS_BACKEND": requested, RESTARTED: "1"}
    # The command line set TensorFlow's log level for its own quiet import; unset by the
    # user, it stays unset, so the new process imports TensorFlow quietly again.
    if native_logs.LEVEL not in _initial_environment(default=native_logs.LEVEL):
        env.pop(native_logs.LEVEL, None)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "keras_bsgd", *sys.argv[1:]], env)


def _initial_environment(default):
    """Names in the environment the process started with (Linux), else just `default`."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return {default}
    return {entry.split(b"=", 1)[0].decode(errors="replace") for entry in entries if entry}
