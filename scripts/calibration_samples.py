"""How many calibration samples INT8 needs: build the same model with several --calibration-samples, compare errors.

    .venv/bin/python scripts/calibration_samples.py tests/fixtures/sd1-tiny --samples 4 8 16 32 --work out/calib

Each build is a full `sdc build --precision int8` (ort-cpu) whose UNet int8 artifact is then run on one
shared set of held-out inputs: a fixed prompt and seed sampled through the model's fp32 graphs, which no
calibration run uses. Prints, per sample count, the UNet's relative RMS and max error against fp32 on
those inputs and the build time. The default in sdc/compile/calibrate.py (DEFAULT_SAMPLES) was chosen
from this table (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOLDOUT_PROMPT = "a lighthouse on a cliff above a stormy sea, oil painting"


def held_out_inputs(bundle: Path, prompt: str = HOLDOUT_PROMPT, steps: int = 8) -> list[dict[str, np.ndarray]]:
    """UNet inputs of one fp32 sampling run of `bundle` (a prompt and seed no calibration run uses)."""
    import sdc.runtime

    pipe = sdc.runtime.load(bundle, provider="cpu", precision="fp32", verify="none")
    captured = []
    unet = pipe.models["unet"]

    def record(**inputs):
        captured.append({k: np.array(v) for k, v in inputs.items()})
        return unet(**inputs)

    pipe.models = dict(pipe.models, unet=record)
    pipe(prompt, num_inference_steps=steps, seed=123, output_type="latent")
    return captured


def main() -> int:
    from sdc.compile.build import build
    from sdc.compile.context import BuildOptions
    from sdc.runtime.bundle import read_manifest, safe_join
    from sdc.runtime.models import OnnxModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--samples", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--work", type=Path, default=Path("out/calibration-samples"))
    ap.add_argument("--prompt", default=HOLDOUT_PROMPT, help="held-out prompt (none of the calibration prompts)")
    ap.add_argument("--calibration-prompts", type=Path, help="prompt file for calibration (default: sdc's)")
    args = ap.parse_args()
    rows, cases = [], None
    for n in args.samples:
        out = args.work / f"n{n}.bundle"
        t0 = time.perf_counter()
        build(args.model_dir, out, BuildOptions(precisions=("int8", "fp32"), calibration_samples=n,
                                                calibration_prompts=args.calibration_prompts), force=True)
        seconds = time.perf_counter() - t0
        if cases is None:
            cases = held_out_inputs(out, args.prompt)
        manifest = read_manifest(out)
        sub = manifest["submodels"]["unet"]
        arts = {(a["target"], a["precision"]): a for a in sub["artifacts"]}
        q = OnnxModel(safe_join(out, arts[("ort-cpu", "int8")]["path"]), sub, ["CPUExecutionProvider"])
        f = OnnxModel(safe_join(out, arts[("ort-cpu", "fp32")]["path"]), sub, ["CPUExecutionProvider"])
        rms, mx = [], []
        for c in cases:
            a, b = q(**c)["out_sample"].astype(np.float64), f(**c)["out_sample"].astype(np.float64)
            rms.append(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))
            mx.append(np.abs(a - b).max() / np.abs(b).max())
        excluded = len(arts[("ort-cpu", "int8")]["precision_record"]["sensitivity"]["excluded"])
        rows.append((n, float(np.mean(rms)), float(np.max(mx)), excluded, seconds))
        print(f"samples {n:3d}: UNet int8 vs fp32 on held-out inputs: rel RMS {rows[-1][1]:.4f}, max rel "
              f"{rows[-1][2]:.4f}; {excluded} layers float; build {seconds:.0f}s", flush=True)
    print("\n| samples | rel RMS | max rel | layers kept float | build s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]} | {r[4]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
