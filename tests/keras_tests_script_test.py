"""`scripts/keras_tests.py`, the harness that runs Keras' own tests with keras_bsgd swapped in."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "keras_tests.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("keras_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pytest_args_are_split_as_a_shell_splits_them(harness):
    args = harness.parse_args(
        ["--pytest-args", "-k 'callbacks_can_update_state or on_batch' -x", "--workers", "2"]
    )
    command = harness.pytest_command(args, "/w", "/site/keras", ["a_test.py"], "bsgd")
    tail = command[command.index("--bsgd-substitute") + 1:]
    assert tail == ["-n", "2", "--dist", "loadfile", "-k", "callbacks_can_update_state or on_batch",
                    "-x", "a_test.py"]
    plain = harness.pytest_command(args, "/w", "/site/keras", ["a_test.py"], "plain")
    assert "--bsgd-substitute" not in plain and plain[-1] == "a_test.py"
