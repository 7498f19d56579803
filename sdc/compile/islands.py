"""Which nodes of an fp32 graph stay fp32 in its fp16/bf16 artifact, each with the reason, from measurements.

Three sources, in order:
1. practice (the anchors): normalisation statistics and softmax run in fp32. ONNX Runtime's
   stable-diffusion optimizer keeps LayerNormalization fp32 for CLIP and its GroupNorm kernel
   accumulates in fp32; TensorRT demoDiffusion and diffusers' `upcast_softmax` keep attention
   probabilities in fp32. A variance of activations above 256 overflows fp16 (256² > 65504).
2. range: the fp32 graph is run on calibration inputs with every float value's min and max observed
   (sdc.compile.ranges: two scalar outputs per value, memory stays flat); a node any of whose float inputs or
   outputs exceeds SAFE_FRACTION of the fp16 range stays fp32. This is what catches an SDXL-style
   VAE overflow: by measurement, not by name.
3. error: when the converted graph still misses the tolerance, the values are compared node by node
   (fp32 run vs the per-op rounding emulation) and the nodes that amplify the error most stay fp32,
   for a few rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FP16_MAX = 65504.0
SAFE_FRACTION = 0.25  # headroom: a later input may reach 4x what calibration saw, and sums grow
PRACTICE_OPS = {
    "LayerNormalization": "norm statistics in fp32 (ONNX Runtime keeps LayerNormalization fp32)",
    "InstanceNormalization": "norm statistics in fp32 (a variance of activations over 256 overflows fp16)",
    "GroupNormalization": "norm statistics in fp32 (a variance of activations over 256 overflows fp16)",
    "Softmax": "attention probabilities in fp32 (TensorRT demoDiffusion, diffusers' upcast_softmax)",
}


@dataclass
class Island:
    node: str
    op: str
    reason: str  # practice | range | error, with the measured number
    measured: float | None = None

    def to_json(self) -> dict:
        return {"node": self.node, "op": self.op, "reason": self.reason, "measured": self.measured}


PERIODIC_OPS = ("Sin", "Cos")
# Ops through which a sinusoid's argument is computed from inputs and constants (t * exp(-k * i / d)).
ARGUMENT_OPS = ("Mul", "Div", "Add", "Sub", "Exp", "Neg", "Cast", "Unsqueeze", "Reshape", "Expand", "Concat",
                "Slice", "Squeeze", "Range", "Flatten", "Transpose")


def practice_islands(model) -> list[Island]:
    out = [Island(n.name, n.op_type, "practice: " + PRACTICE_OPS[n.op_type])
           for n in model.graph.node if n.op_type in PRACTICE_OPS]
    return out + phase_islands(model)


def phase_islands(model) -> list[Island]:
    """Sin/Cos and the nodes computing their argument stay fp32.

    A sinusoidal embedding of a timestep takes sin(t·f) at |t·f| up to 1000, where fp16's spacing
    is 0.5: the phase is gone. diffusers computes timestep embeddings in fp32 for the same reason.
    Walks back from each Sin/Cos through element-wise and shape ops to inputs and constants.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, Island] = {}
    stack = [n for n in model.graph.node if n.op_type in PERIODIC_OPS]
    while stack:
        n = stack.pop()
        if n.name in out:
            continue
        out[n.name] = Island(n.name, n.op_type, "practice: sinusoidal embedding phase in fp32 (fp16's spacing at "
                             "|x| = 1000 is 0.5 rad; diffusers computes timestep embeddings in fp32)")
        for x in n.input:
            p = producer.get(x)
            if p is not None and p.op_type in ARGUMENT_OPS:
                stack.append(p)
    return list(out.values())


def measure_ranges(artifact: Path, cases: list[dict[str, np.ndarray]], scratch: Path | None = None) -> dict[str, float]:
    """max |v| over `cases` of every float value the fp32 artifact computes (ONNX Runtime CPU)."""
    from sdc.compile.ranges import measure

    return measure(artifact, cases).absmax()


def range_islands(model, ranges: dict[str, float], limit: float = SAFE_FRACTION * FP16_MAX) -> list[Island]:
    """Nodes with a float input or output whose measured max |x| exceeds `limit`."""
    out = []
    inits = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        seen = [ranges[v] for v in list(n.input) + list(n.output) if v in ranges and v not in inits]
        worst = max(seen, default=0.0)
        if worst > limit:
            out.append(Island(n.name, n.op_type, f"range: max |x| {worst:.4g} > {limit:.0f} "
                              f"({SAFE_FRACTION:g} of the fp16 range)", worst))
    return out


def merge(*groups: list[Island]) -> list[Island]:
    """First reason wins for a node listed twice."""
    seen: dict[str, Island] = {}
    for g in groups:
        for i in g:
            seen.setdefault(i.node, i)
    return list(seen.values())


def _session_with_outputs(model, outputs: list[str], scratch: Path):
    """An ORT CPU session of `model` (a ModelProto, weights loaded) that returns `outputs`."""
    import tempfile

    import onnx
    import onnxruntime as ort

    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        p = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(p), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])


def amplifiers(fp32_artifact: Path, low_model, case: dict[str, np.ndarray], scratch: Path,
               skip: set[str]) -> list[tuple[str, str, float, float]]:
    """Nodes ranked by how much they amplify the low-precision error, on one (small) case.

    For every node output present in both graphs: e = max|low - fp32| / max|fp32|, and the node's
    amplification is e over the worst e of its inputs (at least fp16's rounding, 2^-11). Returns
    [(node, op, amplification, e)] best first, without the nodes in `skip`.
    """
    import onnx

    from sdc.runtime.emulate import emulated

    from sdc.compile.ranges import float_values

    ref_model = onnx.load(str(fp32_artifact))
    values = float_values(ref_model, inputs=False)
    emu = emulated(low_model)
    in_emu = {o for n in emu.graph.node for o in n.output}
    values = [v for v in values if v in in_emu]
    producer = {o: n for n in ref_model.graph.node for o in n.output}
    ref = dict(zip(values, _session_with_outputs(ref_model, values, scratch).run(values, case)))
    del ref_model
    got = dict(zip(values, _session_with_outputs(emu, values, scratch).run(values, case)))
    rel = {}
    for v in values:
        scale = float(np.max(np.abs(ref[v]))) if ref[v].size else 0.0
        diff = np.abs(got[v].astype(np.float64) - ref[v])
        err = float(np.max(diff)) if diff.size else 0.0
        rel[v] = float("inf") if not np.isfinite(err) else (err / scale if scale > 0 else 0.0)
    ranked = []
    for v in values:
        n = producer[v]
        if n.name in skip:
            continue
        before = max([rel.get(i, 0.0) for i in n.input] + [2.0 ** -11])
        ranked.append((n.name, n.op_type, rel[v] / before, rel[v]))
    ranked.sort(key=lambda r: -r[2])
    return ranked
