"""Memory of the benchmark: the process' peak RSS per model, and the replay buffer's bytes."""

import gc

import keras
import numpy as np

import keras_bsgd
from keras_bsgd.benchmarks import rss


class PeakMemory:
    """Peak resident set size of the process over a phase (Linux `VmHWM`).

    `start()` resets the kernel's high-water mark (`/proc/self/clear_refs`);
    where that is not possible the peak is the process-lifetime peak from
    `getrusage`, and `resettable` is False. On a GPU the TensorFlow allocator's
    peak is tracked too (on TensorFlow only: JAX's cannot be reset).
    """

    def __init__(self):
        self.resettable = False
        self.rss_start = 0
        self._gpu = _tensorflow_gpu()

    def start(self):
        gc.collect()
        self.resettable = rss.reset_peak_rss()
        self.rss_start = rss.rss_bytes()
        if self._gpu:
            try:
                self._gpu.experimental.reset_memory_stats("GPU:0")
            except (ValueError, RuntimeError):
                self._gpu = None
        return self

    def peak(self):
        """`{"peak_rss_bytes", "rss_start_bytes", "gpu_peak_bytes"?, "method"}`."""
        peak, source = rss.peak_rss_bytes()
        if source == "VmHWM":
            method = ("VmHWM (peak RSS) of the process, reset per model" if self.resettable
                      else "VmHWM (lifetime peak RSS) of the process")
        else:
            method = "ru_maxrss (lifetime peak RSS) of the process"
        out = {"peak_rss_bytes": peak, "rss_start_bytes": self.rss_start, "method": method}
        if self._gpu:
            out["gpu_peak_bytes"] = self._gpu.experimental.get_memory_info("GPU:0")["peak"]
        return out


def _tensorflow_gpu():
    """`tf.config` where TensorFlow trains on a GPU, else `None`."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.config if tf.config.list_physical_devices("GPU") else None


def buffer_memory(batch_size=128, image_shape=(32, 32, 3), capacity=64, steps=10_000,
                  num_examples=50_000):
    """Replay-buffer bytes for CIFAR-shaped batches: measured, and projected to `steps`.

    Measured: the `nbytes` of real `keras_bsgd.ReplayBuffer`s of `capacity`
    slots holding uint8 or float32 image batches (int32 labels), or (index
    buffering) `batch_size` int32 example indices per slot, and of the
    `keras_bsgd.DataStore` of `num_examples` uint8 images with int32 labels
    that index buffering gathers from. Projected (arithmetic, not
    allocated): exact mode over `steps` steps.

    Returns:
        A dict with `measured` (a list of dicts), `data_store` and `projection`.
    """
    import tensorflow as tf  # `keras_bsgd.ReplayBuffer` is the TensorFlow backend's.

    pixels = int(np.prod(image_shape))
    measured = []
    for dtype in ("uint8", "float32", "int32 indices"):
        spec = (
            tf.TensorSpec((batch_size,), "int32")
            if dtype == "int32 indices"
            else (
                tf.TensorSpec((batch_size, *image_shape), dtype),
                tf.TensorSpec((batch_size,), "int32"),
                None,
            )
        )
        buffer = keras_bsgd.ReplayBuffer(capacity, spec)
        measured.append({
            "dtype": dtype,
            "capacity": capacity,
            "batch_size": batch_size,
            "nbytes": buffer.nbytes,
            "bytes_per_slot": buffer.nbytes // capacity,
        })
        del buffer
        gc.collect()
    store = keras_bsgd.DataStore()
    store.add((
        np.zeros((num_examples, *image_shape), "uint8"),
        np.zeros((num_examples,), "int32"),
        None,
    ))
    data_store = {"num_examples": num_examples, "nbytes": store.nbytes}
    del store
    gc.collect()
    label_bytes = batch_size * 4
    lr_bytes = 4  # the frozen learning rate, one float32 per slot
    per_step = {
        "uint8": batch_size * pixels * 1 + label_bytes + lr_bytes,
        "float32": batch_size * pixels * 4 + label_bytes + lr_bytes,
        "int32 indices": batch_size * 4 + lr_bytes,
    }
    totals = {k: v * steps for k, v in per_step.items()}
    totals["int32 indices"] += data_store["nbytes"]
    return {
        "measured": measured,
        "data_store": data_store,
        "projection": {
            "steps": steps,
            "batch_size": batch_size,
            "image_shape": list(image_shape),
            "bytes_per_step": per_step,
            "bytes": {k: v * steps for k, v in per_step.items()},
            "total_bytes": totals,
        },
    }


def memory_capacity(windows):
    """Replay-buffer slots of the memory measurement: the largest window, else 64."""
    return max(windows) if windows else 64
