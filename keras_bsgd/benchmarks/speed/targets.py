"""The speed benchmark's targets, and each measurement checked against them."""

R_TARGET = 1.10
"""Target for `R(w)` (w >= 4) and `R_exact(k)` (k >= 16) on CPU."""

COMPILE_RATIO_TARGET = 2.0
"""Target for compile time at the largest window over that at the smallest (w = 1)."""


def check_targets(result):
    """Each target against the measurement: a list of dicts with `met` and `by`.

    `by` is the relative miss (0.25: 25% over the target); 0 when met.
    """
    checks = []
    for run in result["runs"]:
        where = f"{run['model']} b{run['batch_size']}"
        for r in run["windowed"]:
            if r["window"] >= 4:
                checks.append(_check(f"R(w={r['window']}) {where}", r["R"], R_TARGET))
        for r in run["exact"]:
            if r["depth"] >= 16:
                checks.append(_check(f"R_exact(k={r['depth']}) {where}", r["R"], R_TARGET))
        if run.get("compile_ratio") is not None:
            checks.append(_check(f"compile ratio {where}", run["compile_ratio"],
                                 COMPILE_RATIO_TARGET))
    return checks


def _check(name, value, target):
    met = value <= target
    return {"name": name, "value": value, "target": target, "met": met,
            "by": 0.0 if met else value / target - 1.0}
