"""How much arithmetic a forward pass is, and how fast this machine multiplies: the floor under `sdc bench`.

FLOPs are counted twice, independently: from the exported ONNX graph (Conv, MatMul and Gemm nodes,
2 x multiply-accumulates, shapes made concrete by constant folding with ONNX shape inference) and,
for the UNet, analytically from the weight shapes in the checkpoint and the resolution each layer
runs at. The machine's fp32 GEMM throughput (numpy's BLAS and ONNX Runtime's MLAS, median of several
square products, each library in its own process) turns FLOPs into the time a GEMM-bound
implementation would need at that speed.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COUNTED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class GraphFlops:
    total: float
    by_op: dict[str, float]  # op type -> FLOPs
    nodes: int  # counted nodes


@dataclass
class GemmThroughput:
    size: int  # n of the n x n x n product
    repeats: int
    numpy_flops_per_s: float
    ort_flops_per_s: float

    @property
    def best(self) -> float:
        """The faster library: the floor should be as low as this machine can demonstrably go."""
        return max(self.numpy_flops_per_s, self.ort_flops_per_s)


def graph_flops(onnx_path: Path, dims: dict[str, int]) -> GraphFlops:
    """FLOPs of one forward of an ONNX graph with its named dynamic axes fixed to `dims`.

    ONNX shape inference alone leaves most of paddle2onnx's shapes unknown (they flow through
    Shape/Range/Reshape); folding those subgraphs first, with shape inference on, makes every
    Conv/MatMul/Gemm shape static. Weights are never read: external data stays on disk.
    """
    import onnx
    import onnx_ir as ir
    from onnxscript import optimizer

    proto = onnx.load(str(onnx_path), load_external_data=False)
    for value in proto.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = dims[d.dim_param]
    model = ir.from_proto(proto)
    folder_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folder_log.level
    folder_log.setLevel(logging.ERROR)  # a subgraph it cannot evaluate stays as it is: no shape we count is lost
    try:
        optimizer.fold_constants(model, onnx_shape_inference=True)
        if _fold_splits(model):
            optimizer.fold_constants(model, onnx_shape_inference=True)
    finally:
        folder_log.setLevel(level)
    by_op: dict[str, float] = {}
    nodes = 0
    for node in model.graph.all_nodes():
        if node.op_type not in COUNTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        a, b, out = (v.shape for v in (node.inputs[0], node.inputs[1], node.outputs[0]))
        if any(s is None or not s.is_static() for s in (a, b, out)):
            raise ValueError(f"{onnx_path}: shape of {node.op_type} node {node.name!r} is unknown after folding")
        if node.op_type == "Conv":
            macs_per_output = math.prod(b.numpy()[1:])  # Cin/groups * kh * kw
        elif node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            macs_per_output = a.numpy()[0]
        else:
            macs_per_output = a.numpy()[-1]
        by_op[node.op_type] = by_op.get(node.op_type, 0.0) + 2.0 * math.prod(out.numpy()) * macs_per_output
        nodes += 1
    return GraphFlops(sum(by_op.values()), by_op, nodes)


def _fold_splits(model) -> int:
    """Give constant Split outputs their values: the folder skips multi-output nodes, and paddle2onnx
    computes Pad amounts (asymmetric downsampling) by splitting a constant."""
    import onnx_ir as ir

    folded = 0
    for node in model.graph.all_nodes():
        if node.op_type != "Split" or any(v is None or v.const_value is None for v in node.inputs):
            continue
        data = node.inputs[0].const_value.numpy()
        axis = node.attributes.get_int("axis", 0)
        if len(node.inputs) > 1:
            parts = np.split(data, np.cumsum(node.inputs[1].const_value.numpy())[:-1], axis=axis)
        else:
            parts = np.array_split(data, len(node.outputs), axis=axis)
        for out, part in zip(node.outputs, parts):
            out.const_value = ir.tensor(part)
        folded += 1
    return folded


_LEVEL = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.")


def unet_flops_analytic(model_dir: Path, batch: int, latent_hw: tuple[int, int], sequence: int) -> float:
    """UNet FLOPs from the checkpoint's weight shapes: each conv/linear does numel(weight) MACs per output
    position, at the resolution of the block it sits in; attention adds QK^T and PV (2 * N * M * C MACs)."""
    from sdc.graphs import load_config
    from sdc.graphs.weights import find_weight_files, read_weights

    cfg = load_config(model_dir, "unet")
    levels = len(cfg.block_out_channels)
    sizes = [latent_hw]
    for _ in range(levels - 1):  # stride-2 convs with padding 1 round up
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)))
    positions = [h * w for h, w in sizes]

    def level(key: str) -> int:
        if key.startswith("mid_block."):
            return levels - 1
        m = _LEVEL.match(key)
        if not m:
            return 0  # conv_in, conv_out
        i = int(m.group(2))
        if m.group(1) == "down_blocks":
            return i + 1 if ".downsamplers." in key else i
        return levels - 2 - i if ".upsamplers." in key else levels - 1 - i

    macs = 0.0
    for key, w in read_weights(find_weight_files(Path(model_dir) / "unet")).items():
        if not key.endswith(".weight") or len(w.shape) < 2:
            continue  # biases and norms: no multiply-accumulates worth counting
        if key.startswith(("time_embedding.", "add_embedding.")) or ".time_emb_proj." in key:
            n = 1  # one embedding vector per sample
        elif re.search(r"\.attn2\.to_[kv]\.", key):
            n = sequence  # cross-attention keys/values come from the text
        else:
            n = positions[level(key)]
        macs += math.prod(w.shape) * n
        if key.endswith((".attn1.to_q.weight", ".attn2.to_q.weight")):
            tokens = positions[level(key)]
            keys = tokens if ".attn1." in key else sequence
            macs += 2 * tokens * keys * w.shape[0]  # scores and weighted sum over every head
    return 2.0 * batch * macs


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread pools, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_flops_per_s(library: str, size: int = 4096, repeats: int = 5, threads: int = 0) -> float:
    """Measured fp32 FLOP/s of an n x n x n product in numpy (BLAS) or ONNX Runtime (MLAS).

    Run each library in a process of its own: BLAS threads that spin after a product steal the CPUs
    from the next library's threads and halve what it measures (seen on 2 cores).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    if library == "numpy":
        return 2.0 * size**3 / _median_seconds(lambda: a @ b, repeats)

    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("A", "B", "Y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "gemm", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    return 2.0 * size**3 / _median_seconds(lambda: session.run(None, {"A": a, "B": b}), repeats)
