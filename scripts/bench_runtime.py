"""Times a bundle on this machine: one UNet step (CFG batch 2) and a full generation, medians of N runs.

    .venv/bin/python scripts/bench_runtime.py out/sd15.bundle --size 512 --steps 20 --runs 3 [--target portable]

Prints one line per measurement plus peak RSS; paste the output into docs/PERFORMANCE.md with the
command and the machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def median_time(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--generate-runs", type=int, default=1)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--target", default=None, help="artifact to run: portable (unfused) or ort-cpu (default for cpu)")
    args = ap.parse_args()

    import onnxruntime as ort

    import sdc.runtime

    t0 = time.perf_counter()
    pipe = sdc.runtime.load(args.bundle, provider=args.provider, verify="sizes", target=args.target)
    load_s = time.perf_counter() - t0
    unet = pipe.models["unet"]
    sub = pipe.manifest["submodels"]["unet"]
    c = sub["inputs"][0]["shape"][1]
    d = sub["inputs"][2]["shape"][2]
    h = args.size // pipe.config.vae_scale_factor
    rng = np.random.default_rng(0)
    feed = dict(sample=rng.standard_normal((2, c, h, h), dtype=np.float32),
                timestep=np.array([500.0, 500.0], np.float32),
                encoder_hidden_states=rng.standard_normal((2, 77, d), dtype=np.float32))
    unet(**feed)  # warm-up
    step, steps = median_time(lambda: unet(**feed), args.runs)
    pipe("warm up", num_inference_steps=1, height=args.size, width=args.size, seed=0, output_type="np")
    gen, gens = median_time(
        lambda: pipe("a red car", num_inference_steps=args.steps, height=args.size, width=args.size, seed=0,
                     output_type="np"), args.generate_runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cores, onnxruntime {ort.__version__}, "
          f"provider {args.provider}, artifacts {sorted({m.path.name for m in pipe.models.values()})}")
    print(f"load (verify sizes): {load_s:.1f}s")
    print(f"unet step {args.size}x{args.size} batch 2 (one CFG step): median {step:.2f}s of {[round(t, 2) for t in steps]}")
    print(f"generate {args.size}x{args.size}, {args.steps} steps: median {gen:.1f}s of {[round(t, 1) for t in gens]}")
    print(f"stage split of the last generation: {({k: round(v, 1) for k, v in pipe.last_timings.items()})}")
    print(f"peak RSS: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
