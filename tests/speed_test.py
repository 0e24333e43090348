"""Smoke test of keras_bsgd.benchmarks.speed in its tiny configuration, on TensorFlow and JAX.

Checks keys and that every ratio is finite and positive; it never asserts a
timing (the CI machine is shared).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from keras_bsgd.benchmarks import models  # noqa: E402
from keras_bsgd.benchmarks import speed  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    report = out / "performance.md"
    # A hand-written part outside the markers must survive a rewrite.
    report.write_text(f"# Title\n\nHand-written intro.\n\n{speed.BEGIN}\nold\n{speed.END}\n\nNotes.\n")
    json_path = out / "speed.json"
    return speed.main(
        ["--tiny", "--quiet", "--output", str(report), "--json", str(json_path)]
    ), report, json_path


def _positive(value):
    return math.isfinite(value) and value > 0


@pytest.mark.tensorflow
def test_main_prints_ratios(tiny):
    import json

    status, _, json_path = tiny
    assert status == 0
    result = json.loads(json_path.read_text())
    lines = speed.summary_lines(result)
    text = "\n".join(lines)
    for key in ("t_sgd", "R(w=1)", "R(w=4)", "R_exact(k=2)", "R_exact(k=4)",
                "compile_s(w=1)", "compile_s(w=4)", "compile_ratio", "peak_rss_mb",
                "buffer_bytes(uint8", "buffer_bytes(float32", "int32 indices", "data_store_bytes",
                "targets met"):
        assert key in text, key


@pytest.mark.tensorflow
def test_result_keys_and_ratios(tiny):
    import json

    _, _, json_path = tiny
    result = json.loads(json_path.read_text())
    assert {"command", "date", "machine", "config", "runs", "buffer_memory",
            "targets", "wall_time_s"} <= set(result)
    machine = result["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["tensorflow"]
    assert machine["backend"] == "tensorflow"
    (run,) = result["runs"]
    assert run["model"] == "mlp_tiny" and run["batch_size"] == 8
    assert _positive(run["t_sgd_s"])
    assert [r["window"] for r in run["windowed"]] == [1, 4]
    assert [r["depth"] for r in run["exact"]] == [2, 4]
    for r in run["windowed"] + run["exact"]:
        for key in ("t_s", "t_min_s", "R", "R_of_minima"):
            assert _positive(r[key]), (r, key)
        assert r["repeats"] >= 1
    assert set(run["R"]) == {"w=1", "w=4"}
    assert set(run["R_exact"]) == {"k=2", "k=4"}
    assert all(_positive(v) for v in [*run["R"].values(), *run["R_exact"].values()])
    assert set(run["compile_s"]) == {"w=1", "w=4", "sgd", "exact"}
    assert all(math.isfinite(v) for v in run["compile_s"].values())
    assert math.isfinite(run["compile_ratio"])
    memory = run["memory"]
    assert memory["peak_rss_bytes"] > 0
    # Buffers hold window (exact: capacity) batches of 8 x 784 float32 + 8 int32.
    slot = 8 * 784 * 4 + 8 * 4
    assert memory["buffer_bytes"]["w=4"] == 4 * slot
    assert memory["buffer_bytes"]["exact (capacity 4)"] == 4 * slot


@pytest.mark.tensorflow
def test_buffer_memory_uint8_vs_float32(tiny):
    import json

    _, _, json_path = tiny
    bm = json.loads(json_path.read_text())["buffer_memory"]
    by_dtype = {r["dtype"]: r for r in bm["measured"]}
    labels = 128 * 4
    assert by_dtype["uint8"]["bytes_per_slot"] == 128 * 3072 + labels
    assert by_dtype["float32"]["bytes_per_slot"] == 128 * 3072 * 4 + labels
    assert by_dtype["int32 indices"]["bytes_per_slot"] == 128 * 4
    # The index-buffering data store keeps uint8 images as uint8.
    assert bm["data_store"] == {"num_examples": 1000, "nbytes": 1000 * (3072 + 4)}
    p = bm["projection"]
    assert p["steps"] == 100
    assert p["bytes"]["int32 indices"] < p["bytes"]["uint8"] < p["bytes"]["float32"]
    assert p["bytes_per_step"]["int32 indices"] == 128 * 4 + 4
    assert p["total_bytes"]["int32 indices"] == 100 * (128 * 4 + 4) + 1000 * (3072 + 4)


@pytest.mark.tensorflow
def test_memory_only_rewrites_only_the_memory_section(tiny, tmp_path, capsys):
    _, report, _ = tiny
    text = report.read_text()
    path = tmp_path / "performance.md"
    path.write_text(text.replace("| uint8 images |", "| stale |"))
    assert speed.main(["--tiny", "--memory-only", "--memory-examples", "10",
                       "--output", str(path)]) == 0
    new = path.read_text()
    assert "| stale |" not in new and "for 10 uint8 images" in new
    assert new.split(speed.MEMORY_BEGIN)[0] == text.split(speed.MEMORY_BEGIN)[0]
    assert new.split(speed.MEMORY_END)[1] == text.split(speed.MEMORY_END)[1]
    assert "data_store_bytes(10 uint8" in capsys.readouterr().out


@pytest.mark.tensorflow
def test_report_keeps_hand_written_text(tiny):
    _, report, _ = tiny
    text = report.read_text()
    assert text.startswith("# Title\n\nHand-written intro.")
    assert text.rstrip().endswith("Notes.")
    assert "old" not in text.split(speed.BEGIN)[1].split(speed.END)[0]
    for key in ("R = ", "R_exact = ", "Compile time", "Replay-buffer memory",
                "index buffering", "### Targets", speed.MEMORY_BEGIN, speed.MEMORY_END):
        assert key in text, key


def test_small_cnn_builds():
    model = models.small_cnn()
    assert model.output_shape == (None, 10)


def test_benchmark_models_come_from_the_one_registry():
    assert set(speed.INPUT_SHAPES) <= set(models.MODELS)
    # The architecture docs/performance.md reports, under its own name.
    assert models.build("mlp_1024", (784,), 10).count_params() == 1_863_690
    # `compare`'s "mlp" keeps its meaning: one hidden layer of 64.
    assert models.build("mlp", (784,), 10).count_params() == 784 * 64 + 64 + 64 * 10 + 10


@pytest.mark.jax
def test_jax_bench_times_inside_fit_and_keeps_the_tensorflow_tables(tmp_path, capsys):
    report = tmp_path / "performance.md"
    report.write_text(f"# Title\n\n{speed.BEGIN}\nTensorFlow's\n{speed.END}\n\nNotes.\n")
    json_path = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--quiet", "--windows", "1", "--depths", "2", "--steps", "2",
                       "--output", str(report), "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "mlp_tiny b8: R(w=1) = " in out and "mlp_tiny b8: R_exact(k=2) = " in out
    text = report.read_text()
    assert "TensorFlow's" in text and text.rstrip().endswith(speed.JAX_END)
    jax_part = text.split(speed.JAX_BEGIN)[1]
    assert "### JAX, CPU" in jax_part and "R = " in jax_part and "R_exact = " in jax_part
    import json

    (run,) = json.loads(json_path.read_text())["runs"]
    assert _positive(run["R"]["w=1"]) and _positive(run["R_exact"]["k=2"])
    assert speed.main(["--tiny", "--memory-only", "--output", str(report)]) == 2
