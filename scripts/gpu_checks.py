"""The CUDA-only checks, for a machine with an NVIDIA GPU (issue: engines and profiles; run it where a GPU is lent).

Given an SD 1.x bundle built with `--target ort-cuda,tensorrt --precision fp32,fp16 --profile 512x512 --batch 2`
and its diffusers folder (weights are only read for PyTorch's side), it measures on this GPU, side by side:
  1. ONNX Runtime's CUDA provider on the UNet's fused ort-cuda fp32 and fp16 artifacts (the contrib ops
     GroupNorm, BiasSplitGelu and packed-QKV MultiHeadAttention for real) and on the portable fp32 graph:
     median step time, and the max abs error of each against the portable fp32 graph on the same inputs;
  2. PyTorch (diffusers UNet2DConditionModel, fp16, SDPA attention) on the same inputs: median step time;
  3. where TensorRT and cuda-python import: `sdc engines build` into a copy of the bundle (fp16), then the
     TensorRT engine's step time (CUDA graph replay) and its error against ONNX Runtime's fp32.
It prints one JSON object (GPU name, versions, times, errors) and writes it to --out. The goal it checks
(SD 1.5, 512x512, batch 2, fp16): ORT CUDA within 1.2x of PyTorch + SDPA fp16, TensorRT ahead of both.

    python scripts/gpu_checks.py --bundle out/sd15.bundle --model out/sd15-random --out gpu.json

Never run in CI; nothing here is needed by the CPU path. Not yet run on a GPU (none was lent so far).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_seconds(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()  # warm-up: allocations, kernel selection, graph capture
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unet_inputs(manifest: dict, batch: int, latent: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dims = {"batch": batch, "latent_height": latent, "latent_width": latent, "sequence": 77}
    feed = {}
    for t in manifest["submodels"]["unet"]["inputs"]:
        shape = [dims.get(d, d) if isinstance(d, str) else d for d in t["shape"]]
        if t["name"] == "timestep":
            feed[t["name"]] = np.full(shape, 500.0, np.float32)
        else:
            feed[t["name"]] = rng.standard_normal(shape).astype(t["dtype"])
    return feed


def ort_cuda(bundle: Path, manifest: dict, feed: dict, repeats: int) -> dict:
    import onnxruntime as ort

    from sdc.runtime.models import OnnxModel

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    sub = manifest["submodels"]["unet"]
    out, reference = {}, None
    for art in sorted(sub["artifacts"], key=lambda a: (a["target"] != "portable", a["precision"])):
        if art["target"] not in ("portable", "ort-cuda") or art["precision"] not in ("fp32", "fp16"):
            continue
        model = OnnxModel(bundle / art["path"], sub, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        got = model(**feed)["out_sample"] if "out_sample" in model.output_names else next(iter(model(**feed).values()))
        reference = got if reference is None else reference  # the portable fp32 graph runs first
        name = f"{art['target']}/{art['precision']}"
        out[name] = {"median_s": median_seconds(lambda: model(**feed), repeats),
                     "max_abs_vs_portable_fp32": float(np.abs(got.astype(np.float64) - reference).max())}
    return out


def torch_sdpa(model_dir: Path, feed: dict, repeats: int) -> dict:
    try:
        import torch
        from diffusers import UNet2DConditionModel
    except ImportError as e:
        return {"skipped": f"PyTorch/diffusers missing ({e})"}
    if not torch.cuda.is_available():
        return {"skipped": f"torch {torch.__version__} sees no CUDA GPU"}
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.float16).cuda().eval()
    args = {k: torch.from_numpy(v).cuda() for k, v in feed.items()}
    sample, t, ctx = args["sample"].half(), args["timestep"].half(), args["encoder_hidden_states"].half()

    def step():
        with torch.inference_mode():
            unet(sample, t, encoder_hidden_states=ctx)

    return {"fp16_sdpa": {"median_s": median_seconds(step, repeats, torch.cuda.synchronize),
                          "torch": torch.__version__, "attention": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__}}


def tensorrt(bundle: Path, manifest: dict, feed: dict, reference: np.ndarray | None, repeats: int, work: Path) -> dict:
    from sdc.runtime.backend import tensorrt_here

    env = tensorrt_here()
    if isinstance(env, str):
        return {"skipped": env}
    from sdc.engines import BuilderSettings
    from sdc.engines.install import add_engines
    from sdc.engines.tensorrt import build_plan
    from sdc.profiles import bundle_profile
    from sdc.runtime.bundle import read_manifest
    from sdc.runtime.loader import open_engine

    copy = work / bundle.name
    shutil.copytree(bundle, copy, dirs_exist_ok=False)
    t0 = time.perf_counter()
    add_engines(copy, bundle_profile(manifest, None), BuilderSettings(), env, build_plan, "fp16", ["unet"])
    built_s = time.perf_counter() - t0
    m = read_manifest(copy)
    entry = m["submodels"]["unet"]["engines"][-1]
    model, _ = open_engine(copy, m, "unet", entry)
    got = next(iter(model(**feed).values()))
    return {"fp16_engine": {"median_s": median_seconds(lambda: model(**feed), repeats), "build_s": built_s,
                            "plan_bytes": entry["bytes"], "tensorrt": env.tensorrt,
                            "max_abs_vs_ort_fp32": None if reference is None else
                            float(np.abs(got.astype(np.float64) - reference).max())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, help="the diffusers folder the bundle was built from")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("gpu_checks.json"))
    ap.add_argument("--work", type=Path, default=Path("gpu_checks.work"))
    a = ap.parse_args()

    from sdc.runtime.bundle import read_manifest

    manifest = read_manifest(a.bundle)
    latent = a.size // manifest["pipeline"]["vae_downscale"]
    feed = unet_inputs(manifest, a.batch, latent)
    result: dict = {"size": a.size, "batch": a.batch, "repeats": a.repeats}
    try:
        from cuda.bindings import runtime as cudart

        props = cudart.cudaGetDeviceProperties(0)[1]
        result["gpu"] = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    except Exception as e:  # the report says which GPU when it can
        result["gpu"] = f"unknown ({e})"
    result["ort_cuda"] = ort_cuda(a.bundle, manifest, feed, a.repeats)
    result["torch"] = torch_sdpa(a.model, feed, a.repeats)
    ref = None
    if "portable/fp32" in result["ort_cuda"]:
        from sdc.runtime.models import OnnxModel

        sub = manifest["submodels"]["unet"]
        ref = next(iter(OnnxModel(a.bundle / "unet/model.onnx", sub, ["CUDAExecutionProvider"])(**feed).values()))
    a.work.mkdir(parents=True, exist_ok=True)
    result["tensorrt"] = tensorrt(a.bundle, manifest, feed, ref, a.repeats, a.work)
    torch_s = result["torch"].get("fp16_sdpa", {}).get("median_s")
    fused = result["ort_cuda"].get("ort-cuda/fp16", {}).get("median_s")
    engine = result["tensorrt"].get("fp16_engine", {}).get("median_s")
    result["goals"] = {
        "ort_cuda_fp16_within_1.2x_of_torch": None if not (torch_s and fused) else fused <= 1.2 * torch_s,
        "tensorrt_ahead_of_both": None if not (torch_s and fused and engine) else engine < min(torch_s, fused),
    }
    text = json.dumps(result, indent=2)
    a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
