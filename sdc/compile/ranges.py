"""Min and max of every float value a graph computes, observed while it runs: for INT8 scales and fp16 islands.

The graph is run with two extra outputs per float value, ReduceMin and ReduceMax (the same
augmentation onnxruntime's MinMax calibrator makes), so memory stays flat however many values there
are, and the observation rides along with a run that happens anyway (the calibration pipeline).
The result is written in onnxruntime's calibration-cache format, so `quantize_static` takes the
ranges as they are instead of running every calibration input through the graph a second time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

FLOAT = 1  # TensorProto.FLOAT
MIN, MAX = "__sdc_min", "__sdc_max"


def float_values(model, inputs: bool = True) -> list[str]:
    """Names of the float32 graph inputs (when `inputs`) and values computed by nodes (typed by shape
    inference), in graph order."""
    from sdc.passes.onnx.float16 import infer_types

    infer_types(model)
    g = model.graph
    typed = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output) + list(g.input)}
    names = [i.name for i in g.input if typed.get(i.name) == FLOAT] if inputs else []
    return names + [o for n in g.node for o in n.output if o and typed.get(o) == FLOAT]


def observe(model, values: list[str]) -> None:
    """Add min/max outputs for `values` to `model` (in place), after its own outputs.

    Each reduction goes right after the node making its value, and `observed_session` runs the
    graph in onnxruntime's priority-based order, which keeps to it. Appended at the end of the graph
    (as onnxruntime's own calibrator does) and run in its default order, the reductions keep every
    intermediate alive until the end: measured on the SD 1.5 UNet at 512x512, one call peaks at
    11.4 GiB instead of the plain graph's 3.7 GiB (3.8 GiB observed in priority order), and a whole
    calibrating pipeline passed 23 GiB and was killed.
    """
    from onnx import helper

    wanted = set(values)
    reducers: dict[str, list] = {}
    outputs = []
    for i, v in enumerate(values):
        for op, suffix in (("ReduceMin", MIN), ("ReduceMax", MAX)):
            reducers.setdefault(v, []).append(helper.make_node(op, [v], [v + suffix], keepdims=0, name=f"sdc_{op}_{i}"))
            outputs.append(helper.make_tensor_value_info(v + suffix, FLOAT, []))
    inputs = [i.name for i in model.graph.input]
    nodes = [r for name in inputs if name in wanted for r in reducers[name]]
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(r for o in n.output if o in wanted for r in reducers[o])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.output.extend(outputs)


@dataclass
class Ranges:
    """Running min/max per value of one graph (`graph`: the artifact path it was observed on)."""

    graph: str
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    runs: int = 0

    def update(self, names: list[str], values: list[np.ndarray]) -> None:
        for name, v in zip(names, values):
            v = float(v)
            if name.endswith(MIN):
                k = name[: -len(MIN)]
                self.low[k] = min(self.low.get(k, v), v)
            else:
                k = name[: -len(MAX)]
                self.high[k] = max(self.high.get(k, v), v)
        self.runs += 1

    def absmax(self) -> dict[str, float]:
        """max |x| per value (inf where a run produced a non-finite value)."""
        out = {}
        for k in self.high:
            m = max(abs(self.low.get(k, 0.0)), abs(self.high[k]))
            out[k] = m if np.isfinite(m) else float("inf")
        return out

    def save_ort_cache(self, path: Path) -> None:
        """The ranges as onnxruntime's calibration cache (`quantize_static(calibration_cache_path=...)`)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

        data = {k: (np.array(self.low[k], np.float32), np.array(self.high[k], np.float32))
                for k in self.high if k in self.low}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


@contextlib.contextmanager
def observed_session(artifact: Path, threads: int = 0) -> Iterator[tuple[object, list[str], list[str]]]:
    """A CPU session of the fp32 `artifact` that also returns min/max of every float value.

    Yields (session, the artifact's own output names, the observation output names). The augmented
    graph is written beside the artifact (it refers to the artifact's weight file) and removed once
    the session holds what it needs.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(artifact), load_external_data=False)
    own = [o.name for o in model.graph.output]
    observe(model, float_values(model))
    probe = artifact.parent / f".{artifact.stem}.observed.onnx"
    try:
        onnx.save_model(model, str(probe))
        del model
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # see observe(): memory stays as the plain graph's
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(probe), sess_options=opts, providers=["CPUExecutionProvider"])
    finally:
        probe.unlink(missing_ok=True)
    names = [o.name for o in session.get_outputs()]
    yield session, own, names[len(own):]


def measure(artifact: Path, cases: list[dict[str, np.ndarray]]) -> Ranges:
    """Ranges of every float value of `artifact` over `cases`."""
    ranges = Ranges(str(artifact))
    with observed_session(artifact) as (session, own, extra):
        for case in cases:
            ranges.update(extra, session.run(extra, case))
    return ranges
