"""CPU stand-ins for the CUDA-only contrib ops, written from their documented semantics, for tests.

ORT's CPU provider cannot run com.microsoft GroupNorm, BiasSplitGelu or MultiHeadAttention on packed
QKV/KV. To still check what the ort-cuda passes emit numerically (attributes, gamma/beta, epsilon,
the packed weight layout), each such node is replaced by standard ops (and CPU MultiHeadAttention)
following ORT's operator docs: GroupNorm on NHWC input with per-channel gamma/beta and optional
Swish; packed QKV as [B, S, H, 3, hd]; packed KV as [B, Skv, H, 2, hd]; BiasSplitGelu(x, b) =
left half of (x + b) times gelu(right half). This checks our graphs against the documented
contract, not ORT's CUDA kernels: those need a GPU.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CUDA_ONLY = ("GroupNorm", "BiasSplitGelu")


def needs_cuda(model: onnx.ModelProto) -> list[str]:
    """The nodes of `model` that ORT's CPU provider cannot run."""
    shapes = _ranks(model)
    out = []
    for n in model.graph.node:
        if n.domain != "com.microsoft":
            continue
        packed = n.op_type == "MultiHeadAttention" and (shapes.get(n.input[0]) == 5 or
                                                         (len(n.input) > 1 and shapes.get(n.input[1]) == 5))
        if n.op_type in CUDA_ONLY or packed:
            out.append(f"{n.op_type}({n.name})")
    return out


def as_cpu_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose CUDA-only nodes are replaced by their documented decompositions."""
    ranks = _ranks(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits = [], []
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        p = f"ref{len(nodes)}_"
        if n.domain == "com.microsoft" and n.op_type == "GroupNorm":
            nodes += _group_norm(n, attrs, p, inits)
        elif n.domain == "com.microsoft" and n.op_type == "BiasSplitGelu":
            nodes += _bias_split_gelu(n, p, inits)
        elif n.domain == "com.microsoft" and n.op_type == "MultiHeadAttention" and ranks.get(n.input[0]) == 5:
            q, k, v = _unpack(n.input[0], 3, p, nodes, inits)
            nodes.append(_mha(n, [q, k, v, *n.input[3:]], attrs))
        elif n.domain == "com.microsoft" and n.op_type == "MultiHeadAttention" and ranks.get(n.input[1]) == 5:
            k, v = _unpack(n.input[1], 2, p, nodes, inits)
            nodes.append(_mha(n, [n.input[0], k, v, *n.input[3:]], attrs))
        else:
            nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for n in model.graph.node:  # packed inputs come from Reshape(.., [0, 0, H, n, hd]) with a constant target
        if n.op_type == "Reshape":
            target = _constant(model, n.input[1])
            if target is not None:
                ranks[n.output[0]] = len(target)
    return ranks


def _constant(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _init(inits: list, name: str, array) -> str:
    inits.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def _group_norm(n, attrs, p, inits):
    x, gamma, beta = n.input
    groups, eps = attrs["groups"], attrs.get("epsilon", 1e-5)
    assert attrs.get("channels_last", 1) == 1, "ORT's CUDA GroupNorm only supports channels_last"
    nodes = [
        helper.make_node("Transpose", [x], [p + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", [p + "nchw", _init(inits, p + "g", np.array([0, groups, -1], np.int64))],
                         [p + "grouped"]),
        helper.make_node("InstanceNormalization", [p + "grouped", _init(inits, p + "one", np.ones(groups, np.float32)),
                                                   _init(inits, p + "zero", np.zeros(groups, np.float32))],
                         [p + "normed"], epsilon=eps),
        helper.make_node("Shape", [p + "nchw"], [p + "shape"]),
        helper.make_node("Reshape", [p + "normed", p + "shape"], [p + "back"]),
        helper.make_node("Unsqueeze", [gamma, _init(inits, p + "axes", np.array([1, 2], np.int64))], [p + "gamma"]),
        helper.make_node("Unsqueeze", [beta, p + "axes"], [p + "beta"]),
        helper.make_node("Mul", [p + "back", p + "gamma"], [p + "scaled"]),
        helper.make_node("Add", [p + "scaled", p + "beta"], [p + "y"]),
    ]
    y = p + "y"
    if attrs["activation"] == 1:
        nodes += [helper.make_node("Sigmoid", [y], [p + "sig"]), helper.make_node("Mul", [y, p + "sig"], [p + "swish"])]
        y = p + "swish"
    return nodes + [helper.make_node("Transpose", [y], [n.output[0]], perm=[0, 2, 3, 1])]


def _bias_split_gelu(n, p, inits):
    x, b = n.input
    return [
        helper.make_node("Add", [x, b], [p + "h"]),
        helper.make_node("Split", [p + "h"], [p + "value", p + "gate"], axis=-1),  # equal halves (opset 17 form)
        helper.make_node("Gelu", [p + "gate"], [p + "gelu"], domain="com.microsoft"),
        helper.make_node("Mul", [p + "value", p + "gelu"], [n.output[0]]),
    ]


def _unpack(packed: str, count: int, p: str, nodes: list, inits: list) -> list[str]:
    """[B, S, H, count, hd] -> count tensors [B, S, H*hd] (the documented packed layout)."""
    parts = [f"{p}part{i}" for i in range(count)]
    nodes.append(helper.make_node("Split", [packed], parts, axis=3))  # equal parts (opset 17 form)
    flat = _init(inits, p + "flat", np.array([0, 0, -1], np.int64))
    outs = [f"{p}unpacked{i}" for i in range(count)]
    for part, o in zip(parts, outs):
        nodes.append(helper.make_node("Reshape", [part, flat], [o]))
    return outs


def _mha(n, inputs, attrs):
    return helper.make_node("MultiHeadAttention", inputs, list(n.output), domain="com.microsoft", **attrs)
