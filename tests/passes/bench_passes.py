"""ORT CPU time of a UNet-like Paddle export before and after each target's passes (not a test).

    .venv/bin/python -m tests.passes.bench_passes [--size 32] [--runs 15] [--threads 1]

Exports tests.passes.paddle_blocks.TinyUNet at a mid size (channels 64/128, 4 heads, 77x64 context),
runs every variant on the same inputs, interleaved (the machines are shared and noisy), and prints
median milliseconds per variant. Variants that hold CUDA-only ops are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG = dict(channels=(64, 128), heads=4, context_dim=64, groups=16, temb=64)
CUDA_ONLY = ("GroupNorm", "BiasSplitGelu")


def main() -> None:
    import onnx
    import onnxruntime as ort

    from sdc.passes import optimize
    from sdc.passes.onnx import attention
    from sdc.passes.onnx.cleanup import cleanup
    from sdc.passes.onnx.gelu import gelu_ort
    from sdc.passes.onnx.pipelines import PIPELINES
    from tests.passes.paddle_blocks import export_tiny_unet

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32, help="latent height = width")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(export_tiny_unet(Path(tmp) / "unet.onnx", **CONFIG)))
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, args.size, args.size)).astype(np.float32),
        "timestep": np.array([10.0, 900.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, CONFIG["context_dim"])).astype(np.float32),
    }
    variants = {"exported": model}
    for target in PIPELINES:
        variants[target], report = optimize(model, target)
        print(f"{target}: {report.to_json()}")
    # What each ort-cpu fusion is worth alone.
    for name, passes in (("ort-cpu: attention only", (cleanup, attention.attention_ort_cpu)),
                         ("ort-cpu: gelu only", (cleanup, gelu_ort))):
        PIPELINES[name] = passes
        try:
            variants[name], _ = optimize(model, name)
        finally:
            del PIPELINES[name]

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions, reference = {}, None
    for name, m in variants.items():
        if any(n.domain == "com.microsoft" and n.op_type in CUDA_ONLY for n in m.graph.node):
            print(f"{name}: skipped (CUDA-only ops)")
            continue
        sessions[name] = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = sessions[name].run(None, feeds)[0]
        reference = out if reference is None else reference
        print(f"{name}: max |diff| vs exported {float(np.abs(out - reference).max()):.2e}")
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.runs):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["exported"])
    print(f"ORT {ort.__version__} CPU, {args.threads} thread(s), batch 2, latent {args.size}x{args.size}, "
          f"median of {args.runs}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:24s} {med * 1e3:8.1f} ms  ({med / base:.2f}x exported)")


if __name__ == "__main__":
    main()
