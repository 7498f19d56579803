"""Memory over a long run: one loaded pipeline, many generations, resident memory after each.

    .venv/bin/sdc build models/tiny-shapes -o out/shapes.bundle
    .venv/bin/python scripts/long_run_rss.py out/shapes.bundle --generations 60 [--threads 4]

Prints RSS (from /proc/self/status, Linux) after the first generation and every tenth, and the growth
from generation 10 to the last (the first ones warm up allocator pools and ONNX Runtime's caches).
A leak shows as growth that keeps rising with the count; flat means the runtime holds no per-call state.
With --threads, the generations are spread over that many threads sharing the pipeline.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from sdc.runtime.loader import load

    pipe = load(args.bundle, provider="cpu")
    prompts = ["a red circle on a blue background", "a green square on a white background",
               "a yellow triangle on a black background", "a blue circle on a yellow background"]
    samples: dict[int, float] = {0: rss_mib()}
    t0 = time.perf_counter()

    def one(i: int) -> None:
        pipe(prompts[i % len(prompts)], num_inference_steps=args.steps, guidance_scale=4.0, seed=i, output_type="np")

    done = 0
    with ThreadPoolExecutor(args.threads) as pool:
        for start in range(0, args.generations, 10 if args.threads > 1 else 1):
            batch = range(start, min(args.generations, start + (10 if args.threads > 1 else 1)))
            list(pool.map(one, batch))
            done = batch[-1] + 1
            if done == 1 or done % 10 == 0:
                samples[done] = rss_mib()
    seconds = time.perf_counter() - t0
    print(f"# long run: {args.bundle}, {args.generations} generations of {args.steps} steps, "
          f"{args.threads} thread(s), {seconds:.0f} s; {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}")
    print("| after generation | RSS MiB |\n|---|---|")
    for k, v in samples.items():
        print(f"| {k} | {v:.1f} |")
    base = samples.get(10, samples[0])
    print(f"growth from generation 10 to {done}: {samples[done] - base:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
