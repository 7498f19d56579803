"""The per-layer sensitivity sweep: the output error each quantized layer adds on its own, and which stay float.

For every quantizable node, the submodel runs with only that node quantized (the switchable graph
of sdc.passes.onnx.qdq_switch, scales from the real calibration) on held-out calibration inputs,
and its output is compared with the all-float output: the relative RMS error that one layer adds.
Errors of independent layers add roughly in quadrature, so a layer whose squared error is more than
SHARE of the sum over all layers dominates the total and stays float; at most MAX_EXCLUDED of the
layers are excluded (each costs speed). Typical finds: conv_in, conv_out, the time embedding.

The sweep's inputs are cropped spatially (convolutions see the same local statistics; only the
count of positions changes), and many configurations share one run, one per batch row
(sdc.passes.onnx.qdq_switch): a real UNet's few hundred configurations take a handful of runs,
each reading the weights once, instead of a few hundred.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARE = 0.10
MAX_EXCLUDED = 0.10  # fraction of the quantizable nodes
MAX_LATENT_SIDE = 8  # crop of latent-sized inputs for the sweep (image inputs: times the VAE factor)
SWEEP_CASES = 1
ROWS_PER_RUN = 64  # batch rows of one sweep run: configurations x the case's own batch


@dataclass
class Sweep:
    """Sensitivity of every quantizable node; `excluded` stay float, with their measured error."""

    errors: dict[str, float]  # node -> relative RMS output error with only this node quantized
    ops: dict[str, str]
    all_on: float  # every node quantized
    excluded: list[str] = field(default_factory=list)
    cases: int = 0
    seconds: float = 0.0
    by_rule: int = 0  # how many of `excluded` the share rule chose; the rest met the tolerance
    repair_rounds: int = 0
    weights: dict[str, str] = field(default_factory=dict)  # node -> its weight's name (the diffusers parameter)

    def repair(self, excluded: list[str], rounds: int) -> None:
        """Record the final exclusions after the tolerance loop (a superset of the rule's, same order)."""
        self.by_rule = len(self.excluded)
        self.excluded = list(excluded)
        self.repair_rounds = rounds

    def record(self) -> dict:
        included = [e for n, e in self.errors.items() if n not in self.excluded]
        return {
            "method": f"one node quantized at a time on {self.cases} held-out calibration inputs; relative RMS "
                      f"output error vs float; a node whose squared error is > {SHARE:g} of the sum stays float "
                      f"(at most {MAX_EXCLUDED:.0%} of the nodes)",
            "all_quantized_error": self.all_on,
            "excluded": [{"node": n, "op": self.ops[n], "weight": self.weights.get(n, ""), "error": self.errors[n],
                          "why": "dominant share" if i < self.by_rule else "held-out error over tolerance"}
                         for i, n in enumerate(self.excluded)],
            "repair_rounds": self.repair_rounds,
            "quantized": {"count": len(included), "max_error": max(included, default=0.0),
                          "median_error": float(np.median(included)) if included else 0.0},
            "seconds": round(self.seconds, 1),
        }


def crop(case: dict[str, np.ndarray], spec: dict, multiple: int, image_factor: int) -> dict[str, np.ndarray]:
    """Top-left crop of each input's named spatial dims to at most MAX_LATENT_SIDE (latents) or that
    times `image_factor` (images), kept a multiple of `multiple`."""
    out = {}
    for t in spec["inputs"]:
        arr = case[t["name"]]
        idx = []
        for axis, d in enumerate(t["shape"]):
            size = arr.shape[axis]
            if d in ("latent_height", "latent_width"):
                keep = min(size, max(multiple, MAX_LATENT_SIDE // multiple * multiple))
            elif d in ("height", "width"):
                side = MAX_LATENT_SIDE * image_factor
                keep = min(size, max(multiple * image_factor, side // (multiple * image_factor) * multiple * image_factor))
            else:
                keep = size
            idx.append(slice(0, keep))
        out[t["name"]] = np.ascontiguousarray(arr[tuple(idx)])
    return out


def last_row(case: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """The last batch row of every input (the prompt's half of a guided batch), when all are batched.

    The sweep's cost grows with its batch rows, and a guided UNet batch doubles them for a second
    view of the same layers: at real size one row halves the sweep (docs/PERFORMANCE.md).
    """
    if not all(t["shape"] and t["shape"][0] == "batch" for t in spec["inputs"]):
        return case
    return {k: np.ascontiguousarray(v[-1:]) for k, v in case.items()}


def stack(cases: list[dict[str, np.ndarray]], spec: dict) -> list[dict[str, np.ndarray]]:
    """The cases as one batch when every input has a leading `batch` dim and the rest agrees (one run
    per sweep step instead of one per case: the small graphs of tests are overhead-bound)."""
    batched = all(t["shape"] and t["shape"][0] == "batch" for t in spec["inputs"])
    if len(cases) < 2 or not batched:
        return cases
    for t in spec["inputs"]:
        if len({c[t["name"]].shape[1:] for c in cases}) != 1:
            return cases
    return [{t["name"]: np.concatenate([c[t["name"]] for c in cases]) for t in spec["inputs"]}]


def _rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    d = np.sqrt(np.mean((a.astype(np.float64) - ref) ** 2))
    s = np.sqrt(np.mean(ref.astype(np.float64) ** 2))
    return float(d / s) if s > 0 else float(d)


def sweep(qdq_path: Path, fp32_path: Path, nodes: list[str], case: dict[str, np.ndarray], case_batch: int,
          scratch: Path, log=print) -> Sweep:
    """Run the sweep (see module doc) on one (stacked, cropped) case and choose the nodes that stay float.

    Configurations (all off, all on, then each node alone) go through the switchable graph
    ROWS_PER_RUN batch rows at a time; the all-off and all-on rows are checked against the float and
    QDQ graphs run on their own.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    from sdc.errors import ExportError
    from sdc.passes.onnx.qdq_switch import FLAGS, switchable

    t0 = time.perf_counter()
    qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))
    ops = {n.name: n.op_type for n in fp32.graph.node if n.name in set(nodes)}
    inits = {i.name for i in fp32.graph.initializer}
    weights = {n.name: next((i for i in n.input if i in inits), "") for n in fp32.graph.node if n.name in ops}
    switchable(qdq, fp32, nodes)
    del fp32
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        p = Path(tmp) / "sweep.onnx"
        onnx.save_model(qdq, str(p), save_as_external_data=True, location="sweep.onnx.data")
        del qdq
        session = ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    n = len(nodes)
    configs = np.zeros((n + 2, n), np.float32)
    configs[1] = 1.0
    configs[2:] = np.eye(n, dtype=np.float32)
    per_run = max(1, ROWS_PER_RUN // case_batch)
    results: list[list[np.ndarray]] = []
    for start in range(0, len(configs), per_run):
        chunk = configs[start:start + per_run]
        k = len(chunk)
        feed = {name: np.concatenate([v] * k) for name, v in case.items()}
        feed[FLAGS] = np.repeat(chunk, case_batch, axis=0)
        outs = session.run(outputs, feed)
        for j in range(k):
            results.append([o[j * case_batch:(j + 1) * case_batch] for o in outs])
        log(f"sensitivity: {min(start + k, len(configs))}/{len(configs)} configurations")
    off, on = results[0], results[1]
    check_float = _run_plain(fp32_path, case, fuse=True)
    check_qdq = _run_plain(qdq_path, case, fuse=False)
    off_err = max(_rel_rms(a, b) for a, b in zip(off, check_float))
    # The all-on row runs other GEMM kernels than the QDQ graph alone (batch 2 rows, not 1): last-bit
    # differences flip some roundings of later quantizers, so it agrees only to within a fraction of
    # the quantization error itself (measured: 0.07 relative on a random-weight tiny UNet whose
    # all-on error is 0.14). The all-off row has nothing to flip: it must be the float graph.
    q_err = max(_rel_rms(a, b) for a, b in zip(check_qdq, check_float))
    on_err = max(_rel_rms(a, b) for a, b in zip(on, check_qdq))
    if off_err > 1e-4 or on_err > max(1e-3, 0.6 * q_err):
        raise ExportError(f"sensitivity sweep: the switchable graph disagrees with the graphs it switches between "
                          f"(all off {off_err:.2e}, all on {on_err:.2e} vs quantization error {q_err:.2e}); a quantized "
                          f"node's values may not have the batch axis first")
    errors = {name: float(np.mean([_rel_rms(o, r) for o, r in zip(results[2 + i], off)])) for i, name in enumerate(nodes)}
    all_on = float(np.mean([_rel_rms(o, r) for o, r in zip(on, off)]))
    result = Sweep(errors, ops, all_on, cases=case_batch, weights=weights)
    result.excluded = choose_excluded(errors)
    result.seconds = time.perf_counter() - t0
    return result


def _run_plain(path: Path, case: dict[str, np.ndarray], fuse: bool) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return s.run(None, case)


def choose_excluded(errors: dict[str, float], share: float = SHARE, max_fraction: float = MAX_EXCLUDED) -> list[str]:
    """Most sensitive first, while one node holds more than `share` of the remaining squared error."""
    order = sorted(errors, key=lambda k: -errors[k])
    total = sum(e * e for e in errors.values())
    cap = int(max_fraction * len(errors))
    out = []
    for name in order:
        if len(out) >= cap or total <= 0 or errors[name] ** 2 <= share * total:
            break
        out.append(name)
        total -= errors[name] ** 2
    return out
