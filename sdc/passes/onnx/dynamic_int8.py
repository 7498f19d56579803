"""Dynamic int8 (`int8-dynamic`): the MatMuls with a constant weight in int8, activations quantized per call.

Each `MatMul(x, W)` becomes the standard-ONNX pattern onnxruntime's `quantize_dynamic` writes, which
ONNX Runtime's CPU provider fuses into one integer GEMM (DynamicQuantizeMatMul):

    DynamicQuantizeLinear(x) -> x_q (uint8), x_scale, x_zero
    MatMulInteger(x_q, W_q, x_zero, W_zero) -> int32;  Cast -> float;  Mul(·, x_scale * W_scale)

W_q is int8, symmetric per output column (W_zero = 0), 7-bit with `reduce_range` (|q| <= 63: u8 x s7
pair sums cannot saturate the 16-bit adds of x86 CPUs without VNNI, as for static int8), and one
DynamicQuantizeLinear serves every MatMul reading the same activation. Convs and attention stay float.

Why not onnxruntime's `quantize_dynamic`: it loads the whole fp32 model into memory and writes a second
full model; on a real-size SDXL UNet (10.3 GB fp32) the build then peaked at 21 GB RSS on a 23.5 GB
machine and filled the disk with its copies. This writer reads one weight at a time from the graph's
external data, holds only the int8 weights, and the untouched float weights keep pointing into the
file they already live in (sdc.compile.precision_int8.write_dynamic_int8 saves it with
sdc.compile.artifacts.stream_save). tests/passes/test_dynamic_int8.py checks it against
`quantize_dynamic` on the fixtures.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def quantize_weight(w: np.ndarray, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] fp32 -> (int8 [K, N], fp32 scale [N]): symmetric per output column, as w8's weights."""
    from sdc.passes.onnx.qdq import symmetric_per_channel

    return symmetric_per_channel(w, 1, 63 if reduce_range else 127)


def quantize_dynamic_streamed(model, read_weight: Callable, reduce_range: bool) -> dict[str, int]:
    """Rewrite `model` (an onnx ModelProto, its external data not loaded) in place; returns op counts.

    `read_weight(initializer)` returns one fp32 weight's values (sdc.compile reads it from the data file);
    only the int8 weights are held.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    quantized_x: dict[str, tuple[str, str, str]] = {}  # activation -> its DynamicQuantizeLinear outputs
    quantized_w: dict[str, tuple[str, str, str]] = {}  # weight -> (int8, zero point, scale) names
    out_nodes, removed, matmuls = [], set(), 0
    for n in g.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if (w is None or w.name in graph_inputs or w.data_type != TensorProto.FLOAT or len(w.dims) != 2):
            out_nodes.append(n)
            continue
        x, y = n.input[0], n.output[0]
        if x not in quantized_x:
            names = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
            out_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(names), name=f"{x}_QuantizeLinear"))
            quantized_x[x] = names
        if w.name not in quantized_w:
            q, scale = quantize_weight(read_weight(w), reduce_range)
            names = (f"{w.name}_quantized", f"{w.name}_zero_point", f"{w.name}_scale")
            g.initializer.extend([numpy_helper.from_array(q, names[0]),
                                  numpy_helper.from_array(np.zeros(q.shape[1], np.int8), names[1]),
                                  numpy_helper.from_array(scale, names[2])])
            quantized_w[w.name] = names
            removed.add(w.name)
        xq, xs, xz = quantized_x[x]
        wq, wz, ws = quantized_w[w.name]
        base = n.name or y
        out_nodes += [
            helper.make_node("Mul", [xs, ws], [f"{base}_scale"], name=f"{base}_scale_mul"),
            helper.make_node("MatMulInteger", [xq, wq, xz, wz], [f"{base}_int32"], name=f"{base}_MatMulInteger"),
            helper.make_node("Cast", [f"{base}_int32"], [f"{base}_float"], to=TensorProto.FLOAT, name=f"{base}_cast"),
            helper.make_node("Mul", [f"{base}_float", f"{base}_scale"], [y], name=f"{base}_dequantize"),
        ]
        matmuls += 1
    still_read = {i for n in out_nodes for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name not in removed or t.name in still_read]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(out_nodes)
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"MatMulInteger": matmuls, "DynamicQuantizeLinear": len(quantized_x),
            "MatMul": ops.get("MatMul", 0), "Conv": ops.get("Conv", 0)}
