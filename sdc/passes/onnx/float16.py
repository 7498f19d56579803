"""fp16 / bf16: weights and compute in a low float type, except the fp32 islands the caller chose.

The mechanics are ONNX Runtime's converter (`onnxruntime.transformers.float16`, the maintained fork
of onnxconverter-common's, already installed with onnxruntime): it retypes values and weights,
keeps graph inputs/outputs fp32 (the bundle's I/O contract does not change with precision), and
puts Casts around blocked nodes. What it lacks, written here:
- bf16: the converter only emits fp16, so a bf16 graph is the fp16 graph retyped, with every weight
  re-derived from the original fp32 values (not from the fp16-clamped ones);
- ops the ONNX opset has no low-precision kernel for (bf16 Conv before opset 22, ...) become
  islands, found from the op schemas rather than a hand list;
- the converter appends its Casts at the end of the graph; the result is topologically sorted again.
Which nodes stay fp32 is decided by the caller from measurements (sdc.compile.islands); this pass
only executes the decision and counts what it did.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
LOW_NAME = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a unique name (islands and exclusions are lists of node names)."""
    seen = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in seen:
                name += "_"
            n.name = name
            seen.add(name)
            count += 1
    return count


def unsupported_nodes(model: onnx.ModelProto, precision: str) -> dict[str, str]:
    """{node: reason} for default-domain nodes whose schema at the model's opset has no `precision` type
    for an input that would carry a float tensor."""
    from onnx import defs

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    want = LOW_NAME[precision]
    out = {}
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type in ("Cast", "CastLike", "Constant"):
            continue
        try:
            schema = defs.get_schema(n.op_type, opset, "")
        except Exception:
            continue
        if not schema.inputs:
            continue
        param = schema.inputs[0].type_str  # the data input's type parameter (T, T1, ...)
        allowed = next((c.allowed_type_strs for c in schema.type_constraints if c.type_param_str == param), None)
        if allowed is not None and "tensor(float)" in allowed and want not in allowed:
            out[n.name] = f"{n.op_type}-{opset} has no {precision} type in ONNX"
    return out


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder graph.node so every node follows its producers (Kahn's algorithm, stable)."""
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes = list(g.node)
    producers = {o: i for i, n in enumerate(nodes) for o in n.output}
    deps = [{producers[x] for x in n.input if x not in available and x in producers} for n in nodes]
    consumers: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            consumers.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    import heapq

    ready = [i for i, k in enumerate(pending) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, ()):
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle; cannot sort it")
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def _retype_bf16(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> None:
    """The fp16 graph as bf16: types, Cast targets, constants; weights from their fp32 originals."""
    import ml_dtypes

    top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)

    def to_bf16(arr: np.ndarray, name: str):
        # Finite values beyond bf16's range would round to inf (fp32's min as a mask value, times 0,
        # then gives NaN): clamp them as the fp16 converter does for fp16.
        arr = np.asarray(arr, dtype=np.float32)
        arr = np.where(np.isfinite(arr), np.clip(arr, -top, top), arr)
        t = onnx.TensorProto()
        t.name, t.data_type = name, TensorProto.BFLOAT16
        t.dims.extend(arr.shape)
        t.raw_data = np.ascontiguousarray(arr.astype(np.float32).astype(ml_dtypes.bfloat16)).tobytes()
        return t

    g = model.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT16:
            src = originals.get(t.name)
            g.initializer[i].CopyFrom(to_bf16(src if src is not None else numpy_helper.to_array(t), t.name))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    for n in g.node:
        for a in n.attribute:
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.BFLOAT16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(to_bf16(numpy_helper.to_array(a.t), a.t.name))


def convert(model: onnx.ModelProto, precision: str, islands: set[str]) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`model` (fp32, initializers loaded, nodes named) with everything but `islands` in `precision`.

    Consumes `model` (the converter rewrites it in place; copying a real UNet would double the
    memory): load a fresh one per conversion. Returns the new model and counts: nodes converted,
    islands kept fp32, Casts added.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if precision not in LOW:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(LOW)}")
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    originals = {}
    if precision == "bf16":
        originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                     if t.data_type == TensorProto.FLOAT}
    infer_types(model)
    out = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(islands),
                                   op_block_list=list(DEFAULT_OP_BLOCK_LIST), disable_shape_infer=True)
    fold_constant_casts(out)
    bypass_round_trips(out)
    topological_sort(out)
    repaired = repair_types(out, islands, set(DEFAULT_OP_BLOCK_LIST))
    pruned = prune_initializers(out)
    if precision == "bf16":
        _retype_bf16(out, originals)
    check_types(out)
    blocked = set(DEFAULT_OP_BLOCK_LIST)
    counts = {
        "nodes": sum(1 for n in out.graph.node if n.op_type != "Cast" and n.name not in islands
                     and n.op_type not in blocked),
        "islands": len(islands),
        "Cast": sum(n.op_type == "Cast" for n in out.graph.node) - casts_before,
        "type_repairs": repaired,
        "initializers_pruned": pruned,
    }
    return out, counts


def fold_constant_casts(model: onnx.ModelProto) -> int:
    """Casts of constants (Constant nodes, small initializers) become constants of the cast value.

    The converter casts constants that must stay fp32 (Resize's `scales`) at run time; an empty
    `scales` then stops being recognisably empty and ONNX Runtime rejects the Resize ("either sizes
    or scales must be provided"). Folding also saves the run-time casts.
    """
    from onnx import helper

    g = model.graph
    consts = {t.name: t for t in g.initializer if len(t.raw_data) <= 4096 and t.data_location != TensorProto.EXTERNAL}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                consts[n.output[0]] = value
    keep, folded = [], 0
    for n in g.node:
        if n.op_type == "Resize":  # an empty roi/scales constant means "absent": say so, nothing to cast
            for i in (1, 2):
                if i < len(n.input) and n.input[i] in consts and not numpy_helper.to_array(consts[n.input[i]]).size:
                    n.input[i] = ""
        if n.op_type == "Cast" and n.input[0] in consts:
            to = next(a.i for a in n.attribute if a.name == "to")
            arr = numpy_helper.to_array(consts[n.input[0]]).astype(helper.tensor_dtype_to_np_dtype(to))
            value = numpy_helper.from_array(arr, n.output[0])
            keep.append(helper.make_node("Constant", [], [n.output[0]], name=n.name, value=value))
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return folded


def repair_types(model: onnx.ModelProto, islands: set[str], blocked_ops: set[str] = frozenset()) -> int:
    """Insert the Casts the converter missed where a node's inputs of one type parameter disagree.

    The converter types values from onnx's shape inference; a value inference leaves untyped (the
    output of a GroupNormalization-18 island, measured) gets no Cast after it, and the fp16 node
    reading it would mix fp32 and fp16. Types are propagated here in graph order (Cast: its `to`;
    islands and `blocked_ops`: fp32; other nodes: fp16), each node's inputs that share input 0's
    type parameter are cast to the node's type, and stale value_info types are corrected. Returns
    the number of Casts inserted.
    """
    from onnx import defs, helper

    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, inserted = [], 0
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value":
                types[n.output[0]] = a.t.data_type
        if n.op_type in ("Cast", "Constant") or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            for o in n.output:
                if n.op_type == "Cast":
                    types[o] = next(a.i for a in n.attribute if a.name == "to")
                else:
                    types.setdefault(o, types.get(n.output[0], 0))
            continue
        try:
            schema = defs.get_schema(n.op_type, opset, "")
        except Exception:
            schema = None
        want = TensorProto.FLOAT if (n.name in islands or n.op_type in blocked_ops) else TensorProto.FLOAT16
        same = []
        if schema is not None and schema.inputs:
            p0 = schema.inputs[0].type_str
            for i, x in enumerate(n.input):
                k = min(i, len(schema.inputs) - 1)
                if x and schema.inputs[k].type_str == p0 and types.get(x) in floats:
                    same.append(i)
        if not same:  # no float data input: nothing to agree on, outputs keep their declared types
            nodes.append(n)
            continue
        for i in same:
            x = n.input[i]
            if types.get(x) != want:
                cast = f"{x}__sdc_as_{'fp32' if want == TensorProto.FLOAT else 'fp16'}"
                if cast not in types:
                    nodes.append(helper.make_node("Cast", [x], [cast], to=want, name=cast))
                    types[cast] = want
                    inserted += 1
                n.input[i] = cast
        nodes.append(n)
        p0 = schema.inputs[0].type_str
        for k, o in enumerate(n.output):
            out_param = schema.outputs[min(k, len(schema.outputs) - 1)].type_str if schema.outputs else ""
            if out_param == p0 or (o not in types) or types[o] in floats and out_param == p0:
                types[o] = want  # outputs bound to the data inputs' type parameter follow them
    del g.node[:]
    g.node.extend(nodes)
    for v in g.value_info:  # the converter's guesses, corrected where propagation knows better
        if v.name in types and v.type.tensor_type.elem_type in floats and types[v.name] in floats:
            v.type.tensor_type.elem_type = types[v.name]
    return inserted


def prune_initializers(model: onnx.ModelProto) -> int:
    """Drop initializers no node reads any more (the fp32 originals of constants folded to another type)."""
    g = model.graph
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    for n in g.node:  # subgraph readers
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {x for m in a.g.node for x in m.input}
    keep = [t for t in g.initializer if t.name in used]
    removed = len(g.initializer) - len(keep)
    if removed:
        del g.initializer[:]
        g.initializer.extend(keep)
    return removed


def check_types(model: onnx.ModelProto) -> None:
    """Strict onnx type inference over the graph (weights lifted out): a node mixing types fails here."""
    lifted = {}
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > 4096:
            lifted[t.name] = t.raw_data
            t.ClearField("raw_data")
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    finally:
        for t in model.graph.initializer:
            if t.name in lifted:
                t.raw_data = lifted.pop(t.name)


def bypass_round_trips(model: onnx.ModelProto) -> int:
    """fp32 → low → fp32 Cast pairs read the fp32 original instead.

    The converter casts every fp32 graph input to fp16 at once and an fp32 island that reads it
    casts it back, rounding a value that was exact (a timestep of 951.43 becomes 951.5). Reading the
    original is never less precise; the Cast pair is left for other readers (and removed when dead).
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    redirect = {}
    for n in g.node:
        if n.op_type != "Cast" or next(a.i for a in n.attribute if a.name == "to") != TensorProto.FLOAT:
            continue
        inner = producer.get(n.input[0])
        if inner is None or inner.op_type != "Cast":
            continue
        to = next(a.i for a in inner.attribute if a.name == "to")
        if to in LOW.values() and types.get(inner.input[0]) == TensorProto.FLOAT:
            redirect[n.output[0]] = inner.input[0]
    outputs = {o.name for o in g.output}
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in redirect and x not in outputs:
                n.input[i] = redirect[x]
    used = {x for n in g.node for x in n.input} | outputs
    keep = [n for n in g.node if not (n.op_type == "Cast" and n.output[0] in redirect and n.output[0] not in used)]
    removed = len(g.node) - len(keep)
    del g.node[:]
    g.node.extend(keep)
    return removed


def infer_types(model: onnx.ModelProto) -> None:
    """Add inferred value_info to `model` in place (the converter needs every value's type).

    onnx's inference refuses protos over 2 GB (a real UNet's weights), and reads no weight bytes, so
    it runs with the large initializers' bytes lifted out and put back after.
    """
    lifted = {}
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > 4096:
            lifted[t.name] = t.raw_data
            t.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    finally:
        for t in model.graph.initializer:
            if t.name in lifted:
                t.raw_data = lifted.pop(t.name)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
