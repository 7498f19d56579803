"""Run an fp16/bf16 graph faithfully on a CPU: the same graph in fp32 with every low-precision value rounded.

ONNX Runtime's CPU provider runs an fp16 graph by wrapping the ops it lacks in casts to fp32 and then
merging adjacent casts, so intermediate values are never rounded: an intermediate overflow (inf in
fp16) silently disappears (measured: x·1000/1000 at x = 100 gives 100, not inf). That is no validation.

This rewrite keeps the artifact's graph node for node and makes the rounding explicit: every
tensor typed fp16/bf16 in the artifact becomes fp32 holding exactly the low-precision value —
initializers and constants are widened (exact), and each node that produced a low-precision value
is followed by Cast(to=low) → Cast(to=float), which ONNX Runtime keeps at every optimisation level
(measured). So each op computes in fp32 on fp16-representable inputs and its result is rounded to
fp16, overflowing to inf where fp16 would: what GPU kernels do for element-wise ops, and for
GEMM/conv with fp32 accumulation (cuBLAS/TensorRT's default for fp16). Reductions inside an fp16 op
(a softmax's sum) accumulate in fp32 here, as GPU kernels do.

`onnx.reference` runs the unmodified graph in numpy's real fp16 arithmetic; it is too slow for real
sizes, so the tests use it to check this emulation on the small fixtures.
"""

from __future__ import annotations

from pathlib import Path

LOW_TYPES = {10: "fp16", 16: "bf16"}  # TensorProto.FLOAT16, TensorProto.BFLOAT16
FLOAT = 1
ROUND_SUFFIX = "__sdc_low"

EMULATION_NOTE = ("onnxruntime CPUExecutionProvider, fp16/bf16 emulated per op: the artifact's graph with every "
                  "low-precision value rounded (fp32 compute on rounded inputs, each result rounded, overflow to inf)")


def low_precision_of(model) -> str | None:
    """"fp16" / "bf16" when the graph computes in a low float type anywhere, else None."""
    for t in model.graph.initializer:
        if t.data_type in LOW_TYPES:
            return LOW_TYPES[t.data_type]
    for n in model.graph.node:
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i in LOW_TYPES:
                    return LOW_TYPES[a.i]
    return None


def _widen_tensor(t) -> None:
    """A fp16/bf16 TensorProto rewritten in place as the fp32 tensor of the same values (exact)."""
    import numpy as np
    from onnx import numpy_helper

    if t.data_type == 16 and t.HasField("raw_data"):  # onnx 1.17's to_array reads raw bf16 as zeros
        import ml_dtypes

        arr = np.frombuffer(t.raw_data, dtype=ml_dtypes.bfloat16).reshape(tuple(t.dims))
    else:
        arr = numpy_helper.to_array(t)
    arr = arr.astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _value_types(model) -> dict[str, int]:
    """Element type of every value that shape inference or the graph declares."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # contrib ops or a >2 GB proto: fall back to what the graph declares
        inferred = model
    types = {}
    g = inferred.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:  # what inference could not type (contrib ops): a Cast says, else the inputs' float type
        for out in n.output:
            if out in types or not out:
                continue
            to = next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None
            if to is not None:
                types[out] = to
            else:
                floats = [types[i] for i in n.input if i in types and types[i] in (FLOAT, *LOW_TYPES)]
                if floats:
                    types[out] = floats[0]
    return types


def emulated(model):
    """The fp32 emulation of a low-precision ModelProto (initializers must be loaded). Returns a new model."""
    import onnx
    from onnx import helper

    low = {k for k in LOW_TYPES}
    types = _value_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in g.initializer:
        if t.data_type in low:
            _widen_tensor(t)
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in low:
            v.type.tensor_type.elem_type = FLOAT
    nodes = []
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in low:
                _widen_tensor(a.t)
        rounded = []
        for i, name in enumerate(n.output):
            kind = types.get(name)
            if name and kind in low:
                raw = name + ROUND_SUFFIX
                n.output[i] = raw
                rounded.append((raw, name, kind))
        if n.op_type == "Cast":  # a cast to fp16 stays; the pair below rounds and widens its result
            for a in n.attribute:
                if a.name == "to" and a.i in low:
                    a.i = FLOAT
        nodes.append(n)
        for raw, name, kind in rounded:
            nodes.append(helper.make_node("Cast", [raw], [raw + "_cast"], to=kind, name=f"{name}/round"))
            nodes.append(helper.make_node("Cast", [raw + "_cast"], [name], to=FLOAT, name=f"{name}/widen"))
    del g.node[:]
    g.node.extend(nodes)
    return out


def emulated_session(path: Path, scratch: Path | None = None, threads: int = 0):
    """An onnxruntime CPU session running the emulation of the low-precision artifact at `path`."""
    import onnx

    return emulated_session_of(onnx.load(str(path)), scratch, threads)


def model_bytes(model) -> int:
    """Serialized size of an in-memory ONNX model, also past protobuf's 2 GB limit, where `ByteSize()` itself
    raises (protobuf 7: EncodeError 'Failed to serialize proto' on a real-size fp16 UNet with its casts)."""
    try:
        return model.ByteSize()
    except Exception:  # too big to measure by serializing: count the tensors' bytes, which dominate
        return sum(t.ByteSize() for t in model.graph.initializer) + (1 << 31)


def emulated_session_of(low_model, scratch: Path | None = None, threads: int = 0):
    """A session emulating the in-memory low-precision `low_model` (left unchanged).

    Graphs whose fp32 weights exceed the 2 GB protobuf limit are written to `scratch` with external data.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    model = emulated(low_model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Basic: constant folding and no fusions that could merge an op with its rounding casts.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        opts.intra_op_num_threads = threads
    if model_bytes(model) < (1 << 31) - (1 << 26):
        return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        p = Path(tmp) / "emulated.onnx"
        onnx.save_model(model, str(p), save_as_external_data=True, location="emulated.onnx.data")
        del model
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
