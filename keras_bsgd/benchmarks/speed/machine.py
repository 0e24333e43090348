"""`machine_info`: what the benchmark ran on, recorded with its results."""

import importlib.metadata
import os
import platform
import re

import keras

import keras_bsgd


def machine_info():
    """CPU model, core counts, accelerators, library versions and load, as a dict."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory_gb = psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover - psutil comes with the bench extra
        physical, memory_gb = None, None
    backend = keras.backend.backend()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "memory_gb": None if memory_gb is None else round(memory_gb, 1),
        "gpus": _gpus(backend),
        "backend": backend,
        "backend_version": importlib.metadata.version(backend),
        # Its version whichever backend ran (TFDS and tf.data need it); None: not installed.
        "tensorflow": _version("tensorflow"),
        "keras": keras.__version__,
        "keras_bsgd": keras_bsgd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus(backend):
    """The GPUs the backend trains on, by name."""
    if backend == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
