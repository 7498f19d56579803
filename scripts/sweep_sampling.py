"""Choose a bundle's sampling settings (scheduler, steps, guidance) by prompt adherence on a prompt set.

Selection must happen on prompts the final figure is not reported on: sweep the training captions
(`--prompts train`), pick the best setting there, then report `sdc eval` on the held-out set with it.
Prints one Markdown row per setting (overall and shape accuracy, seconds per image) and writes JSON.

    .venv/bin/python scripts/sweep_sampling.py out/shapes.bundle --prompts train --seeds 1 \
        --schedulers ddim,dpmpp_2m,euler --guidance 3,4,6,8 --steps 20 --json out/sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from sdc.eval import promptsets
from sdc.eval.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--prompts", default="train", help="a shipped set (train, heldout, ci) or a file")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--schedulers", default="ddim", help="comma-separated scheduler names")
    ap.add_argument("--guidance", default="4", help="comma-separated guidance scales")
    ap.add_argument("--steps", default="20", help="comma-separated step counts")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--json", default=None, help="write every setting's summary here")
    a = ap.parse_args()
    prompts = promptsets.read_prompts(a.prompts)
    rows = []
    print("| scheduler | steps | guidance | overall | shape | s / image |\n|---|---|---|---|---|---|", flush=True)
    for sched, steps, g in itertools.product(a.schedulers.split(","), [int(s) for s in a.steps.split(",")],
                                             [float(x) for x in a.guidance.split(",")]):
        t0 = time.perf_counter()
        r = evaluate(a.bundle, prompts, seeds=a.seeds, steps=steps, guidance=g, scheduler=sched,
                     precision=a.precision)
        shape = r.per_attribute().get("shape", (float("nan"), 0))[0]
        rows.append({"scheduler": sched, "steps": steps, "guidance": g, "overall": r.overall, "shape": shape,
                     "seconds_per_image": r.seconds_per_image, "wall_s": time.perf_counter() - t0})
        print(f"| {sched} | {steps} | {g:g} | {r.overall:.1%} | {shape:.1%} | {r.seconds_per_image:.2f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"bundle": a.bundle, "prompts": a.prompts, "seeds": a.seeds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
