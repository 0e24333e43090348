#!/usr/bin/env python3
"""Keras' own tests as a check of keras_bsgd: the regressions against plain Keras.

The keras wheel ships its test files (`keras/src/**/*_test.py`). This script
runs a set of them, as installed, twice with pytest, each in its own process:
plain, and with keras_bsgd substituted (scripts/keras_tests_plugin.py with
`--bsgd-substitute`: every model compiled with Keras `SGD` is trained by a
keras_bsgd model class and `BackwardSGD(window=1)`, which equals `SGD` step for
step). It prints the counts of both runs, the regressions (passed plain,
failed substituted) with the first line of each error, and the tests that
fail both ways. See docs/guarantees.md, "Keras' own tests".

Usage:

    .venv/bin/python scripts/keras_tests.py [--backend tensorflow|jax]
        [--files PATH ...] [--output report.json] [--fail-on-regressions]
        [--workers N] [--sequential] [--snapshot] [--timeout S] [--keep DIR]

`--files` takes paths relative to the installed `keras` package
(`src/callbacks/csv_logger_test.py`) or absolute. The exit status is 0 unless
`--fail-on-regressions` is given and there are regressions (1), or a run gave
no results at all (2).
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))

# The set used when issue #20 was filed, relative to the keras package.
DEFAULT_FILES = (
    "src/trainers/trainer_test.py",
    "src/models/model_test.py",
    "src/models/sequential_test.py",
    "src/models/functional_test.py",
    "src/optimizers/sgd_test.py",
    "src/optimizers/optimizer_test.py",
    "src/callbacks/early_stopping_test.py",
    "src/callbacks/model_checkpoint_test.py",
    "src/callbacks/backup_and_restore_test.py",
    "src/callbacks/reduce_lr_on_plateau_test.py",
    "src/callbacks/learning_rate_scheduler_test.py",
    "src/callbacks/csv_logger_test.py",
    "src/callbacks/tensorboard_test.py",
    "src/callbacks/lambda_callback_test.py",
    "src/callbacks/monitor_callback_test.py",
    "src/callbacks/swap_ema_weights_test.py",
)

# Keras runs its tests with these warning filters (its pyproject.toml): any
# other warning is an error. Markers come from the plugin.
PYTEST_INI = """\
[pytest]
junit_family = xunit1
junit_logging = no
filterwarnings =
    error
    ignore::DeprecationWarning
    ignore::ImportWarning
    ignore::RuntimeWarning
    ignore::PendingDeprecationWarning
    ignore::FutureWarning
    ignore::UserWarning
    ignore:Custom mask layers require a config
"""

MODES = ("plain", "bsgd")
FAILED = ("failed", "error")
OUTCOME_RANK = {"missing": 0, "passed": 1, "skipped": 2, "failed": 3, "error": 4}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Run Keras' own test files plain and with keras_bsgd substituted; "
        "report the regressions.",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND") or "tensorflow",
        help="Keras backend of both runs (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--files",
        nargs="+",
        help="test files, relative to the installed keras package or absolute "
        "(default: the issue #20 set of 16 files)",
    )
    parser.add_argument("--output", help="write a JSON report here")
    parser.add_argument(
        "--fail-on-regressions",
        action="store_true",
        help="exit with status 1 if any test passes plain and fails substituted",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="pytest-xdist workers per run (default 0: no xdist)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run plain, then substituted (default: both at once, one process each)",
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="run both on a copy of keras_bsgd taken at the start "
        "(the source may change meanwhile)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds after which a run is stopped"
    )
    parser.add_argument("--keep", help="keep the pytest logs and junit files in this folder")
    parser.add_argument(
        "--python", default=sys.executable, help="Python that runs pytest (default: this one)"
    )
    parser.add_argument(
        "--pytest-args", default="",
        help="extra pytest arguments for both runs (one string, split as a shell would: "
        "--pytest-args \"-k 'a or b'\")"
    )
    return parser.parse_args(argv)


def locate(python, module):
    """The folder of `module`'s package for `python`, found without importing it."""
    code = (
        "import importlib.util, os, sys; spec = importlib.util.find_spec(sys.argv[1]); "
        "print(os.path.dirname(spec.origin) if spec and spec.origin else '')"
    )
    out = subprocess.run([python, "-c", code, module], capture_output=True, text=True, check=True)
    return out.stdout.strip() or None


def version_of(python, distribution):
    code = "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))"
    out = subprocess.run([python, "-c", code, distribution], capture_output=True, text=True)
    return out.stdout.strip() or None


def git_state(folder):
    """HEAD of the checkout holding `folder`, and whether `folder` differs from it."""
    def git(*args):
        out = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return {"head": None}
    changed = git("status", "--porcelain", "--", ".")
    return {"head": head, "uncommitted_changes": bool(changed)}


def source_digest(folder):
    """A digest of the package's Python files: which (possibly uncommitted) source ran."""
    digest = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()[:12]


def resolve_files(keras_dir, files):
    paths = []
    for name in files or DEFAULT_FILES:
        path = name if os.path.isabs(name) else os.path.join(keras_dir, name)
        if not os.path.isfile(path) and not os.path.isabs(name) and name.startswith("keras/"):
            path = os.path.join(os.path.dirname(keras_dir), name)
        if not os.path.isfile(path):
            raise SystemExit(f"keras_tests.py: no such test file: {name} (looked at {path})")
        paths.append(path)
    return paths


def pytest_command(args, work, keras_dir, files, mode):
    command = [
        args.python, "-m", "pytest",
        "-c", os.path.join(work, "pytest.ini"),
        "--rootdir", os.path.dirname(keras_dir),
        "--confcutdir", keras_dir,
        "-p", "no:cacheprovider",
        "-p", "keras_tests_plugin",
        "-q", "-rA", "--tb=short",
        f"--junitxml={os.path.join(work, mode + '.xml')}",
    ]
    if mode == "bsgd":
        command.append("--bsgd-substitute")
    if args.workers:
        command += ["-n", str(args.workers), "--dist", "loadfile"]
    command += shlex.split(args.pytest_args)
    return command + files


def environment(args, snapshot):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = args.backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The installed test files stay as they are: no bytecode written next to them.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    paths = [HERE] + ([snapshot] if snapshot else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_all(args, work, keras_dir, files, env):
    """Starts the runs (both at once unless --sequential); returns {mode: seconds}."""
    seconds = {}

    def start(mode):
        log = open(os.path.join(work, mode + ".log"), "w")
        command = pytest_command(args, work, keras_dir, files, mode)
        print(f"[{mode}] {' '.join(command)}", flush=True)
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return process, log, time.monotonic()

    def finish(mode, process, log, started):
        try:
            process.wait(timeout=None if args.timeout is None else
                         max(1.0, args.timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print(f"[{mode}] stopped after --timeout {args.timeout:.0f} s", flush=True)
        log.close()
        seconds[mode] = time.monotonic() - started
        print(f"[{mode}] pytest exit status {process.returncode}, {seconds[mode]:.0f} s",
              flush=True)

    if args.sequential:
        for mode in MODES:
            finish(mode, *start(mode))
    else:
        running = {mode: start(mode) for mode in MODES}
        for mode in MODES:
            finish(mode, *running[mode])
    return seconds


def first_line(text):
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def excerpt(text, lines=25):
    rows = (text or "").rstrip().splitlines()
    return "\n".join(rows[-lines:])


def parse_junit(path):
    """{test id: record} from a junit file; None if there is none (the run crashed)."""
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    results = {}
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        test = f"{classname}::{name}" if classname else name
        outcome, message, text = "passed", "", ""
        for kind in ("skipped", "failure", "error"):
            element = case.find(kind)
            if element is not None:
                outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[kind]
                message = first_line(element.get("message")) or first_line(element.text)
                text = element.text or ""
        properties = {
            p.get("name"): p.get("value") for p in case.iter("property")
        }
        record = {
            "outcome": outcome,
            "message": message,
            "text": text,
            "time": float(case.get("time") or 0.0),
            "substituted": properties.get("bsgd_substituted"),
            "kept_plain": properties.get("bsgd_kept_plain"),
        }
        old = results.get(test)
        # A test can be reported twice (a failure, then an error at teardown).
        if old is None or OUTCOME_RANK[outcome] > OUTCOME_RANK[old["outcome"]]:
            if old is not None:
                record["substituted"] = record["substituted"] or old["substituted"]
                record["kept_plain"] = record["kept_plain"] or old["kept_plain"]
            results[test] = record
    return results


SUMMARY_LINE = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)(?: - (.*))?$")


def parse_log(path):
    """Outcomes from `-rA`'s summary, where no junit file was written (a crashed run)."""
    results = {}
    if not os.path.exists(path):
        return results
    with open(path, errors="replace") as log:
        for line in log:
            match = SUMMARY_LINE.match(line.rstrip("\n"))
            if not match:
                continue
            word, nodeid, message = match.groups()
            module, _, rest = nodeid.partition("::")
            module = module[:-3].replace("/", ".") if module.endswith(".py") else module
            classname, _, name = rest.rpartition("::")
            test = f"{module}.{classname}::{name}" if classname else f"{module}::{name}"
            results[test] = {
                "outcome": {"PASSED": "passed", "FAILED": "failed", "ERROR": "error"}[word],
                "message": message or "",
                "text": "",
                "time": 0.0,
                "substituted": None,
                "kept_plain": None,
            }
    return results


def compare(plain, bsgd):
    missing = {"outcome": "missing", "message": "", "text": "", "substituted": None,
               "kept_plain": None, "time": 0.0}
    tests = []
    for test in sorted(set(plain) | set(bsgd)):
        p, b = plain.get(test, missing), bsgd.get(test, missing)
        tests.append({
            "test": test,
            "plain": p["outcome"],
            "bsgd": b["outcome"],
            "plain_message": p["message"],
            "bsgd_message": b["message"],
            "bsgd_error": excerpt(b["text"]) if b["outcome"] in FAILED else "",
            "substituted": b["substituted"],
            "kept_plain": b["kept_plain"],
            "plain_time": p["time"],
            "bsgd_time": b["time"],
        })
    return tests


def counts(tests, mode):
    result = {"total": 0}
    for outcome in ("passed", "failed", "error", "skipped", "missing"):
        result[outcome] = 0
    for test in tests:
        if test[mode] != "missing":
            result["total"] += 1
        result[test[mode]] += 1
    return result


def summarize(tests):
    broken = FAILED + ("missing",)
    regressions = [t for t in tests if t["plain"] == "passed" and t["bsgd"] in broken]
    both = [t for t in tests if t["plain"] in FAILED and t["bsgd"] in FAILED]
    fixed = [t for t in tests if t["plain"] in FAILED and t["bsgd"] == "passed"]
    substituted = [t for t in tests if t["substituted"]]
    return {
        "plain": counts(tests, "plain"),
        "bsgd": counts(tests, "bsgd"),
        "regressions": len(regressions),
        "fail_both": len(both),
        "pass_only_substituted": len(fixed),
        "tests_with_substitution": len(substituted),
        "tests_with_substitution_passing_both": sum(
            t["plain"] == "passed" and t["bsgd"] == "passed" for t in substituted
        ),
        "tests_with_sgd_model_kept_plain": sum(bool(t["kept_plain"]) for t in tests),
    }, regressions, both, fixed


def short(test):
    return test.replace("keras.src.", "")


def clip(text, width=160):
    return text if len(text) <= width else text[: width - 3] + "..."


def print_report(meta, summary, regressions, both, fixed, tests):
    print()
    print(f"Keras {meta['keras_version']} tests ({len(meta['files'])} files) on "
          f"{meta['backend']}; keras_bsgd at {meta['keras_bsgd_git'].get('head')}"
          + (" + uncommitted changes" if meta["keras_bsgd_git"].get("uncommitted_changes") else "")
          + f" (source digest {meta['keras_bsgd_source_digest']})")
    for mode, label in (("plain", "plain Keras"), ("bsgd", "keras_bsgd substituted")):
        c = summary[mode]
        print(f"  {label:23s}: {c['total']} tests, {c['passed']} passed, "
              f"{c['failed'] + c['error']} failed ({c['error']} errors), {c['skipped']} skipped"
              + (f", {c['missing']} missing" if c["missing"] else "")
              + f"  [{meta['seconds'][mode]:.0f} s]")
    print(f"  tests where a model was substituted: {summary['tests_with_substitution']} "
          f"({summary['tests_with_substitution_passing_both']} pass both ways); "
          f"SGD-compiled models kept plain in {summary['tests_with_sgd_model_kept_plain']} tests")
    print()
    print(f"Regressions (pass plain, fail substituted): {len(regressions)}")
    for t in regressions:
        print(f"  {short(t['test'])}")
        print(f"      {clip(t['bsgd_message'] or t['bsgd'])}")
    print()
    print(f"Fail both ways: {len(both)}")
    for t in both:
        print(f"  {short(t['test'])}: {clip(t['plain_message'], 110)}")
    if fixed:
        print()
        print(f"Fail plain, pass substituted: {len(fixed)}")
        for t in fixed:
            print(f"  {short(t['test'])}: {clip(t['plain_message'], 110)}")
    kept = sorted({k for t in tests if t["kept_plain"] for k in t["kept_plain"].split("; ")})
    if kept:
        print()
        print("SGD-compiled models left plain:")
        for k in kept:
            print(f"  {k}")


def main(argv=None):
    args = parse_args(argv)
    keras_dir = locate(args.python, "keras")
    bsgd_dir = locate(args.python, "keras_bsgd")
    if keras_dir is None or bsgd_dir is None:
        raise SystemExit(f"keras_tests.py: {args.python} cannot import keras and keras_bsgd")
    files = resolve_files(keras_dir, args.files)
    work = tempfile.mkdtemp(prefix="keras_tests_")
    try:
        with open(os.path.join(work, "pytest.ini"), "w") as ini:
            ini.write(PYTEST_INI)
        snapshot = None
        if args.snapshot:
            snapshot = os.path.join(work, "snapshot")
            shutil.copytree(bsgd_dir, os.path.join(snapshot, "keras_bsgd"),
                            ignore=shutil.ignore_patterns("__pycache__"))
        meta = {
            "backend": args.backend,
            "keras_version": version_of(args.python, "keras"),
            "keras_dir": keras_dir,
            "keras_bsgd_dir": bsgd_dir,
            "keras_bsgd_git": git_state(bsgd_dir),
            "keras_bsgd_source_digest": source_digest(
                os.path.join(snapshot, "keras_bsgd") if snapshot else bsgd_dir
            ),
            "snapshot": bool(snapshot),
            "files": [os.path.relpath(f, os.path.dirname(keras_dir)) for f in files],
            "workers": args.workers,
            "sequential": args.sequential,
        }
        started = time.monotonic()
        meta["seconds"] = run_all(args, work, keras_dir, files, environment(args, snapshot))
        meta["seconds"]["total"] = time.monotonic() - started
        results = {}
        for mode in MODES:
            results[mode] = parse_junit(os.path.join(work, mode + ".xml"))
            meta[f"{mode}_junit"] = results[mode] is not None
            if results[mode] is None:
                print(f"[{mode}] no junit file (the run crashed or was stopped): "
                      "outcomes from its -rA summary", flush=True)
                results[mode] = parse_log(os.path.join(work, mode + ".log"))
        tests = compare(results["plain"], results["bsgd"])
        summary, regressions, both, fixed = summarize(tests)
        print_report(meta, summary, regressions, both, fixed, tests)
        print(f"\nTotal time: {meta['seconds']['total']:.0f} s")
        if args.output:
            with open(args.output, "w") as out:
                json.dump({"meta": meta, "summary": summary, "tests": tests}, out, indent=1)
            print(f"JSON report: {args.output}")
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for mode in MODES:
                for ext in (".xml", ".log"):
                    path = os.path.join(work, mode + ext)
                    if os.path.exists(path):
                        shutil.copy(path, args.keep)
        if not results["plain"] or not results["bsgd"]:
            return 2
        if args.fail_on_regressions and regressions:
            return 1
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
