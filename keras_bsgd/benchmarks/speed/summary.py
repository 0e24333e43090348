"""The speed benchmark's results as `key = value` lines (what `keras-bsgd bench` prints)."""


def run_lines(run):
    """One setting's step time, ratios and compile times as `key = value` lines, and its prefix."""
    where = f"{run['model']} b{run['batch_size']}"
    lines = [f"{where}: t_sgd = {1e3 * run['t_sgd_s']:.3f} ms"]
    lines += [f"{where}: R({k}) = {v:.3f}" for k, v in run["R"].items()]
    lines += [f"{where}: R_exact({k}) = {v:.3f}" for k, v in run["R_exact"].items()]
    lines += [f"{where}: compile_s({k}) = {v:.2f}" for k, v in run["compile_s"].items()]
    return lines, where


def summary_lines(result):
    """The ratios, compile times and memory as `key = value` lines (what `main` prints)."""
    lines = []
    for run in result["runs"]:
        run_summary, where = run_lines(run)
        lines += run_summary
        if run.get("compile_ratio") is not None:
            lines.append(f"{where}: compile_ratio = {run['compile_ratio']:.2f}")
        lines.append(f"{where}: peak_rss_mb = {run['memory']['peak_rss_bytes'] / 2**20:.1f}")
        lines += [f"{where}: buffer_bytes({k}) = {v}"
                  for k, v in run["memory"]["buffer_bytes"].items()]
    lines += memory_summary_lines(result["buffer_memory"])
    missed = [t for t in result["targets"] if not t["met"]]
    lines.append(f"targets met: {len(result['targets']) - len(missed)}/{len(result['targets'])}")
    return lines


def memory_summary_lines(bm):
    """The buffer-memory measurements and projection as `key = value` lines."""
    lines = [f"buffer_bytes({r['dtype']}, capacity {r['capacity']}, "
             f"batch {r['batch_size']}) = {r['nbytes']}" for r in bm["measured"]]
    lines.append(f"data_store_bytes({bm['data_store']['num_examples']} uint8 32x32x3 "
                 f"examples) = {bm['data_store']['nbytes']}")
    p = bm["projection"]
    lines += [f"exact_{p['steps']}_steps_bytes({k}) = {v}" for k, v in p["bytes"].items()]
    lines.append(f"exact_{p['steps']}_steps_bytes(int32 indices + data store) = "
                 f"{p['total_bytes']['int32 indices']}")
    return lines
