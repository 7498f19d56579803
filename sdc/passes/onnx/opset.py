"""Raising the default-domain opset from 17 to 18 in place, for passes that emit opset-18 ops.

onnx's version_converter would do this on a ModelProto, which means a full copy and protobuf's 2 GB
limit (every real UNet is larger). Of the ops revised at 18 (onnx.defs, since_version == 18), two
change what an opset-17 node means: the Reduce* ops take `axes` as an input instead of an attribute,
and Split without a `split` input needs `num_outputs`. Those are adapted here. The others (Pad,
Resize, ScatterElements, ScatterND, LpPool, Optional*) only gained optional inputs or attributes
whose defaults keep the opset-17 behaviour; the rest are new at 18. Nodes inside subgraphs or local
functions are not adapted, so models with them are left at their opset (blockers_to_18 says why).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

AXES_TO_INPUT = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSumSquare",
})
_DEFAULT = ("", "ai.onnx")


def default_version(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def set_default_version(model: ir.Model, version: int) -> None:
    model.graph.opset_imports[""] = version
    model.opset_imports[""] = version


def blockers_to_18(model: ir.Model) -> list[str]:
    """Why the model cannot be moved to opset 18 here ([] if it can, or already is)."""
    if default_version(model) >= 18:
        return []
    if default_version(model) < 17:
        return [f"opset {default_version(model)} < 17: only 17 -> 18 is handled"]
    if model.functions:
        return ["model has local functions (not adapted)"]
    blockers = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in _DEFAULT and node.op_type in ("If", "Loop", "Scan"):
            blockers.append(f"{node.op_type} {node.name}: subgraphs are not adapted")
    return blockers


def adapt_nodes_to_18(model: ir.Model) -> int:
    """Rewrite opset-17 nodes whose meaning changed at 18; returns how many were changed."""
    changed = 0
    for node in list(model.graph):
        if node.domain not in _DEFAULT:
            continue
        if node.op_type in AXES_TO_INPUT and "axes" in node.attributes:
            axes = node.attributes.pop("axes").value
            axes_value = ir.Value(name=f"{node.name or node.op_type}.axes", const_value=ir.tensor(
                np.asarray(axes, dtype=np.int64), name=f"{node.name or node.op_type}.axes"))
            axes_value.shape, axes_value.dtype = ir.Shape([len(axes)]), ir.DataType.INT64
            model.graph.register_initializer(axes_value)
            node.resize_inputs(2)
            node.replace_input_with(1, axes_value)
            changed += 1
        elif node.op_type == "Split" and (len(node.inputs) < 2 or node.inputs[1] is None) \
                and "num_outputs" not in node.attributes:
            node.attributes["num_outputs"] = ir.AttrInt64("num_outputs", len(node.outputs))
            changed += 1
    return changed
