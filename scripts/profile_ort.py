"""Where a bundle's submodel spends its time in ONNX Runtime: per-op-type totals from ORT's profiler.

    .venv/bin/python scripts/profile_ort.py out/sd15.bundle --submodel unet --target portable --size 512
    .venv/bin/python scripts/profile_ort.py out/sd15.bundle --submodel unet --target ort-cpu --size 512

Runs `--warmup` calls, then `--runs` timed calls (UNet batch 2 = one guidance step) and prints, per
op type, the total kernel time per call, its share, and the node count. Compare two targets to see
what a pass changed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--submodel", default="unet")
    ap.add_argument("--target", default="portable")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled-in-the-totals calls first (the second call "
                    "of a session can still be slow while ORT's memory arena grows)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    import onnxruntime as ort

    from sdc.runtime.bundle import read_manifest, safe_join
    from sdc.runtime.loader import choose_artifact

    manifest = read_manifest(args.bundle)
    sub = manifest["submodels"][args.submodel]
    art = choose_artifact(sub, args.submodel, args.target)
    f = manifest["pipeline"]["vae_downscale"]
    dims = {"batch": 2, "sequence": 77, "height": args.size, "width": args.size,
            "latent_height": args.size // f, "latent_width": args.size // f}
    rng = np.random.default_rng(0)
    feed = {}
    for t in sub["inputs"]:
        shape = [d if isinstance(d, int) else dims[d] for d in t["shape"]]
        if t["dtype"] == "int64":
            feed[t["name"]] = rng.integers(0, 49407, shape, dtype=np.int64)
        elif t["name"] == "timestep":
            feed[t["name"]] = np.full(shape, 500.0, np.float32)
        else:
            feed[t["name"]] = rng.standard_normal(shape, dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(str(safe_join(args.bundle, art["path"])), opts, providers=["CPUExecutionProvider"])
        for _ in range(args.warmup):
            sess.run(None, feed)
        for _ in range(args.runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())

    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs[args.warmup:]
    start = timed[0]["ts"] if timed else 0
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"] / 1e6 / max(1, len(timed))
        nodes[op].add(e["name"])
    total = sum(per_op.values())
    wall = np.median([r["dur"] / 1e6 for r in timed]) if timed else float("nan")
    print(f"{args.submodel} {art['target']}/{art['precision']} at {args.size}x{args.size}: "
          f"median run {wall:.2f} s, kernel time {total:.2f} s per run")
    for op, s in sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {op:28s} {s:7.3f} s  {100 * s / total:5.1f}%  {len(nodes[op]):4d} nodes")


if __name__ == "__main__":
    main()
