"""The process' resident set size: now, and its peak (Linux `VmRSS` / `VmHWM`)."""

import ctypes
import re
import resource
import sys


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def rss_bytes():
    """The resident set size of this process now, in bytes.

    Example:

    >>> rss_bytes() > 0
    True
    """
    rss = _status_kb("VmRSS")
    if rss is not None:
        return rss * 1024
    # Not Linux: psutil (the `bench` extra) reads it the platform's way.
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes():
    """The peak resident set size of this process, in bytes, and how it was read.

    The peak is the kernel's high-water mark (`VmHWM`), which
    `reset_peak_rss()` lowers to the current size; elsewhere it is the
    lifetime peak from `getrusage`.

    Returns:
        A tuple `(bytes, source)`, `source` one of `"VmHWM"`, `"ru_maxrss"`.

    Example:

    >>> peak, source = peak_rss_bytes()
    >>> peak > 0, source in ("VmHWM", "ru_maxrss")
    (True, True)
    """
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm * 1024, "VmHWM"
    # Linux reports ru_maxrss in kB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "ru_maxrss"


def reset_peak_rss():
    """Lowers the kernel's peak-RSS mark to the current RSS (Linux `clear_refs`).

    Returns:
        Whether the peak was reset; `False` where the kernel does not allow
        it, and `peak_rss_bytes()` then keeps the lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def release_free_heap():
    """Returns the C heap's free pages to the system (glibc `malloc_trim(0)`).

    RSS then counts the memory the process holds, not what its allocator
    keeps free after a burst of allocations (compiling a program leaves such
    pages behind, unevenly from one cycle to the next).

    Returns:
        Whether the heap was trimmed; `False` without glibc.

    Example:

    >>> release_free_heap() in (True, False)
    True
    """
    try:
        # The process' own symbols: libc's, without a library search per call.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
