"""What each compiled model leaves in the process, by the code that allocated it (needs memray).

`keras_bsgd.benchmarks.leak` measures how much memory each compile + fit cycle keeps; this
says what that memory is. It runs one cycle untracked (caches every model shares), then
`cycles` cycles under memray's native tracker, and sorts the allocations still alive at the
end by the C++ (or Python) code that made them. On TensorFlow under XLA they are what the
process keeps of each compiled program for as long as it lives (docs/performance.md,
"Memory").

Usage: `python -m keras_bsgd.benchmarks.leak --where [--compare] [...]`.
"""

import os
import tempfile

# The innermost frame of a known component names an allocation's owner;
# stack traces are named first, whatever code froze them.
CATEGORIES = (
    "stack traces of traced ops",
    "XLA code generation and compiled code",
    "XLA programs (HLO, analyses)",
    "TensorFlow runtime (graphs, functions)",
    "Python",
    "other",
)
_COMPONENTS = (
    (("xla::cpu::", "xla::gpu::", "llvm::", "mlir::"), CATEGORIES[1]),
    (("xla::",), CATEGORIES[2]),
    (("tensorflow::",), CATEGORIES[3]),
    (("_Py", "Py"), CATEGORIES[4]),
)
# Return types and templates that come before a C++ function's own name.
_PREFIXES = ("void ", "bool ", "int ", "unsigned ", "std::", "absl::", "tsl::", "google::")


def category(frames):
    """The category (one of `CATEGORIES`) of an allocation made through `frames`.

    `frames`: the function names of its native stack, innermost first.

    Example:

    >>> category(["operator new(unsigned long)", "xla::HloInstruction::Clone()"])
    'XLA programs (HLO, analyses)'
    """
    names = [frame.split("(")[0] for frame in frames]
    if any("StackTrace" in name for name in names):
        return CATEGORIES[0]
    for name in names:
        name = name.split(" ")[-1] if name.startswith(_PREFIXES) else name
        for prefixes, owner in _COMPONENTS:
            if name.startswith(prefixes):
                return owner
    return CATEGORIES[-1]


def measure(cycles=3, steps=20, window=4, **settings):
    """MiB per compiled model that `cycles` compile + fit cycles leave alive, by category.

    Args:
        cycles: Tracked cycles (after one untracked).
        steps, window, **settings: As in `keras_bsgd.benchmarks.leak.one_cycle`.

    Returns:
        `{category: MiB per model}` over `CATEGORIES`.

    Example:

    >>> kept = measure(cycles=1, steps=2)
    >>> list(kept) == list(CATEGORIES)
    True
    """
    import memray

    from keras_bsgd.benchmarks import leak

    leak.one_cycle(steps, window, **settings)
    leak.settled_rss()
    kept = dict.fromkeys(CATEGORIES, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cycles.bin")
        with memray.Tracker(path, native_traces=True):
            for _ in range(cycles):
                leak.one_cycle(steps, window, **settings)
                leak.settled_rss()
        reader = memray.FileReader(path)
        for record in reader.get_leaked_allocation_records(merge_threads=True):
            frames = [frame[0] for frame in record.native_stack_trace()]
            kept[category(frames)] += record.size / 2**20 / cycles
    return kept


def report(kept_by_label):
    """The table `--where` prints: `{column label: measure(...)}` to lines of text.

    Example:

    >>> print(report({"Keras SGD": dict.fromkeys(CATEGORIES, 0.5)}).splitlines()[-1])
    total                                           3.00
    """
    labels = list(kept_by_label)
    width = max(len(name) for name in CATEGORIES)
    lines = [
        "MiB kept per compiled model, by the code that allocated it",
        " " * width + "".join(f"  {label:>12}" for label in labels),
    ]
    for name in CATEGORIES + ("total",):
        values = [
            sum(kept.values()) if name == "total" else kept[name]
            for kept in kept_by_label.values()
        ]
        lines.append(f"{name:<{width}}" + "".join(f"  {value:>12.2f}" for value in values))
    return "\n".join(lines)
