"""INT8 graphs: static Q/DQ through onnxruntime.quantization, and weights-only int8 (w8).

Static int8 uses `onnxruntime.quantization.quantize_static` (QDQ format, per-channel weights,
MinMax calibration) for the mechanics; sdc supplies the calibration data (sdc.compile.calibrate),
decides which nodes stay float (sdc.compile.sensitivity) and validates. Choices, with their reasons:
- only Conv and the MatMuls with a constant weight are quantized, named one by one in
  `nodes_to_quantize` (onnxruntime's `MatMulConstBOnly` is honoured by its QOperator quantizer only:
  in QDQ format it quantizes activation×activation MatMuls, and the Transposes feeding them, as
  well): attention scores (Q·Kᵀ, P·V), softmax and norms stay float;
- MatMul outputs are not re-quantized: ONNX Runtime then fuses DQ→MatMul into MatMulIntegerToFloat,
  one fewer rounding per projection; Conv outputs are, because only DQ→Conv→Q fuses into QLinearConv.
- per target scheme (SCHEMES): ONNX Runtime CPU gets uint8 activations with 7-bit weights
  (`reduce_range`): x86 CPUs without VNNI multiply u8×s8 pairs with vpmaddubsw, whose 16-bit sums
  saturate at full 8-bit range. Measured on an AVX2-only AMD EPYC, tiny UNet: error vs fp32 0.47 with
  8-bit weights in the integer kernels vs 0.083 for the same graph computed exactly (no fusion), and
  0.12 vs 0.11 with 7-bit weights. With 7 bits the integer result is the exact one on every x86 CPU,
  VNNI or not. TensorRT needs symmetric int8 (zero point 0) and has no such saturation.

Dynamic int8 (`int8-dynamic`, no calibration) is written in sdc.passes.onnx.dynamic_int8.

w8 is written here: ONNX Runtime's quantizers do static/dynamic activation quantization or
block-wise MatMulNBits (a contrib op TensorRT cannot parse); a standard-ONNX per-channel
DequantizeLinear on each weight runs on every provider.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

QUANTIZED_OPS = ("Conv", "MatMul")


@dataclass(frozen=True)
class Int8Scheme:
    target: str
    activation_type: str  # uint8 | int8
    symmetric_activations: bool
    reduce_range: bool  # 7-bit weights
    why: str

    def to_json(self) -> dict:
        return {"activations": self.activation_type, "activation_symmetric": self.symmetric_activations,
                "weights": "int8 per-channel symmetric" + (", 7-bit (reduce_range)" if self.reduce_range else ""),
                "why": self.why}


SCHEMES = {
    "ort-cpu": Int8Scheme("ort-cpu", "uint8", False, True,
                          "u8 activations, 7-bit weights: exact on x86 CPUs without VNNI (no u8s8 16-bit saturation)"),
    "tensorrt": Int8Scheme("tensorrt", "int8", True, False, "TensorRT: symmetric int8, zero points 0"),
}
# How a CPU validates each scheme's graph: ort-cpu's runs in the integer kernels it ships for; the
# TensorRT graph's full-range int8 weights would saturate those kernels on CPUs without VNNI, so it
# runs with Q/DQ as plain ops (no fusion): the exact quantized arithmetic TensorRT computes.
VALIDATE_FUSED = {"ort-cpu": True, "tensorrt": False}


class Reader:
    """onnxruntime's CalibrationDataReader over captured input dicts (a class of theirs, subclassed lazily)."""

    def __new__(cls, cases: list[dict[str, np.ndarray]]):
        from onnxruntime.quantization import CalibrationDataReader

        class _Reader(CalibrationDataReader):
            def __init__(self, items):
                self.items = list(items)
                self.it = iter(self.items)

            def get_next(self):
                return next(self.it, None)

            def __len__(self):
                return len(self.items)

            def rewind(self):
                self.it = iter(self.items)

        return _Reader(cases)


def quantize_int8(fp32_path: Path, out_path: Path, scheme: Int8Scheme, cases: list[dict[str, np.ndarray]] | None,
                  cache: Path, exclude: list[str], external: bool) -> None:
    """Static int8 QDQ of the graph at `fp32_path` into `out_path`: its `quantizable_nodes` but `exclude`.

    The activation ranges come from `cache` (onnxruntime's calibration-cache JSON, which
    sdc.compile.ranges writes from what it observed); with `cases` and no cache file, onnxruntime's
    MinMax calibrator makes it first. sdc observes the ranges itself because that calibrator appends
    its ReduceMin/ReduceMax nodes at the end of the graph, which keeps every intermediate alive for
    the whole run (a real UNet at 512x512 then needs over 23 GiB), and its `CalibMaxIntermediateOutputs`
    drops the data it collected (1.32: collect_data clears before it computes).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import onnx

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    nodes = [n for n in quantizable_nodes(onnx.load(str(fp32_path), load_external_data=False)) if n not in set(exclude)]
    with quiet_root_logger():  # its advice to run onnxruntime's pre-processing: our graphs are already clean
        quantize_static(
            str(fp32_path), str(out_path), Reader(cases) if cases is not None else None,
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            reduce_range=scheme.reduce_range, activation_type=qtype[scheme.activation_type],
            weight_type=QuantType.QInt8, nodes_to_quantize=nodes, nodes_to_exclude=list(exclude),
            use_external_data_format=external,
            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"],
                           "ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True},
        )


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger; keep its warnings out of sdc's output."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def quantizable_nodes(model) -> list[str]:
    """Names of the nodes quantize_int8 would quantize: Conv, and MatMul with a constant second input."""
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            out.append(n.name)
        elif n.op_type == "MatMul" and (n.input[1] in inits or n.input[1] in consts):
            out.append(n.name)
    return out


def quantized_counts(model) -> dict[str, int]:
    """Op counts of a QDQ graph: quantized nodes by type (their weight comes from a DequantizeLinear),
    and the Q/DQ nodes."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and producer.get(n.input[1]) == "DequantizeLinear":
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def symmetric_per_channel(arr: np.ndarray, axis: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and fp32 scales (one per index of `axis`), zero point 0: scale = max|x| / qmax over the
    channel (1 for an all-zero channel), q = round(x / scale) clipped to [-qmax, qmax]."""
    reduce = tuple(i for i in range(arr.ndim) if i != axis)
    scale = np.max(np.abs(arr), axis=reduce) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * arr.ndim
    shape[axis] = -1
    q = np.clip(np.rint(arr / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def weights_only_int8(model, exclude: set[str], bits: int = 8) -> dict[str, int]:
    """Rewrite `model` in place: each Conv/MatMul weight in `quantizable_nodes` (minus `exclude`) becomes
    int8 (symmetric, per output channel) followed by a DequantizeLinear. Returns counts by op type."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    qmax = 2 ** (bits - 1) - 1
    done: dict[str, str] = {}
    counts: dict[str, int] = {}
    new_nodes = []
    for name in quantizable_nodes(model):
        if name in exclude:
            continue
        n = nodes[name]
        w = n.input[1]
        if w not in inits:
            continue
        if w not in done:
            arr = numpy_helper.to_array(inits[w]).astype(np.float32)
            axis = 0 if n.op_type == "Conv" else arr.ndim - 1  # Conv: out channels first; MatMul: [.., K, N]
            q, scale = symmetric_per_channel(arr, axis, qmax)
            g.initializer.remove(inits[w])
            g.initializer.extend([numpy_helper.from_array(q, w + "_w8"), numpy_helper.from_array(scale, w + "_w8_scale")])
            new_nodes.append(helper.make_node("DequantizeLinear", [w + "_w8", w + "_w8_scale"], [w], axis=axis,
                                              name=w + "_w8_dequantize"))
            done[w] = w
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    # Dequantize nodes first: they read only initializers, so the order stays topological.
    rest = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + rest)
    return counts
