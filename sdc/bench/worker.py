"""One `sdc bench` measurement in a process of its own: `python -m sdc.bench.worker TASK.json`.

A task builds a bundle, times one variant of one submodel, or measures one library's GEMM speed. Each runs in a fresh process so
that its peak RSS (ru_maxrss) is its own and the variants never share memory or thread pools. The
result is a JSON file beside the task (and, for a timing, the outputs as .npz); the parent reads
those, never this process's stdout.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

TORCH_HINT = "install the bench extra: pip install -e '.[bench]'"


class Skip(Exception):
    """The variant cannot run here (a missing optional dependency): reported, not a failure."""


def _torch_model(model_dir: Path, name: str, threads: int) -> Callable[..., dict]:
    """diffusers/transformers on PyTorch, eager fp32, under inference_mode."""
    try:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel
    except ImportError as e:
        raise Skip(f"{type(e).__name__}: {e} ({TORCH_HINT})") from e

    torch.set_num_threads(threads)
    fp32 = torch.float32
    if name == "text_encoder":
        m = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=fp32)
        fn = lambda input_ids: (lambda o: {"last_hidden_state": o.last_hidden_state,  # noqa: E731
                                           "pooler_output": o.pooler_output})(m(input_ids=input_ids))
    elif name == "unet":
        m = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=fp32)

        def fn(sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None  # SDXL
            return {"out_sample": m(sample, timestep, encoder_hidden_states, added_cond_kwargs=added).sample}
    elif name == "transformer":  # Flux: diffusers builds the rotary tables from ids; the same ids as sdc's inputs
        from diffusers import FluxTransformer2DModel

        from sdc.graphs.specs import sample_ids

        m = FluxTransformer2DModel.from_pretrained(model_dir, subfolder="transformer", torch_dtype=fp32)

        def fn(hidden_states, encoder_hidden_states, pooled_projections, timestep, rope_cos, rope_sin, guidance=None):
            n_txt = encoder_hidden_states.shape[1]
            ids = torch.from_numpy(sample_ids(n_txt, hidden_states.shape[1]))
            return {"out_sample": m(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                    pooled_projections=pooled_projections, timestep=timestep, guidance=guidance,
                                    txt_ids=ids[:n_txt], img_ids=ids[n_txt:]).sample}
    elif name == "text_encoder_2":  # Flux's T5
        from transformers import T5EncoderModel

        m = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder_2", dtype=fp32)
        fn = lambda input_ids: {"last_hidden_state": m(input_ids=input_ids).last_hidden_state}  # noqa: E731
    elif name == "vae_decoder":
        m = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=fp32)
        fn = lambda latent_sample: {"sample": m.decode(latent_sample).sample}  # noqa: E731
    else:
        m = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=fp32)
        fn = lambda sample: {"latent_parameters": m.encode(sample).latent_dist.parameters}  # noqa: E731
    m.eval()

    def prepare(inputs: dict[str, np.ndarray]):
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

        def run() -> dict[str, np.ndarray]:
            with torch.inference_mode():
                return {k: v.numpy() for k, v in fn(**tensors).items()}

        return run

    return prepare


def _paddle_model(model_dir: Path, name: str, threads: int) -> Callable[..., dict]:
    """sdc's Paddle module in dygraph on CPU, under no_grad: what `sdc build` traces."""
    import paddle

    import sdc.graphs
    from sdc.graphs.family import pipeline_config
    from sdc.graphs.specs import spec_for

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)
    spec = spec_for(name, pipeline_config(model_dir, name))
    layer = sdc.graphs.load(model_dir, name)

    def prepare(inputs: dict[str, np.ndarray]):
        args = [paddle.to_tensor(inputs[n]) for n in spec.input_names]

        def run() -> dict[str, np.ndarray]:
            with paddle.no_grad():
                out = layer(*args)
            out = out if isinstance(out, (tuple, list)) else (out,)
            return {n: t.numpy() for n, t in zip(spec.output_names, out)}

        return run

    return prepare


def _sdc_model(bundle: Path, name: str, threads: int, precision: str = "fp32",
               target: str | None = None) -> tuple[Callable[..., dict], dict]:
    """One submodel of a bundle in ONNX Runtime (CPU): the `target` artifact (portable for the `sdc` variant),
    by default the one the runtime chooses for cpu.

    Opens it the way `sdc.runtime.load` does (`open_model`), but alone: the full pipeline would open
    every submodel's session, and their weights would count in this process's peak RSS.
    """
    from sdc.runtime.bundle import read_manifest, verify_files
    from sdc.runtime.loader import open_model
    from sdc.runtime.models import resolve_providers

    manifest = read_manifest(bundle)
    verify_files(bundle, manifest, full=False)
    model, art = open_model(bundle, manifest, name, resolve_providers("cpu"), target, threads=threads,
                            precision=precision)
    detail = dict(artifact=f"{art['target']}/{art['precision']}", path=art["path"], sha256=art["sha256"],
                  rewrites=_rewrites(art))

    def prepare(inputs: dict[str, np.ndarray]):
        return lambda: model(**inputs)

    return prepare, detail


def _rewrites(artifact: dict) -> str:
    """What the passes changed, e.g. 'cleanup removed 1523 nodes; attention: MultiHeadAttention 22' ('none')."""
    parts = []
    for pass_name, counts in artifact.get("passes", {}).items():
        if not any(counts.values()):
            continue
        if pass_name.startswith("cleanup"):
            parts.append(f"{pass_name} removed {sum(counts.values())} nodes")
        else:
            parts.append(f"{pass_name}: " + ", ".join(f"{op} {n}" for op, n in counts.items() if n))
    return "; ".join(parts) or "none"


def time_variant(task: dict) -> dict:
    """Load, warm up, then time `runs` calls; outputs of the last call go to task['outputs']."""
    variant, name, threads = task["variant"], task["component"], task["threads"]
    t0 = time.perf_counter()
    detail: dict = {}
    if variant == "torch":
        prepare = _torch_model(Path(task["model_dir"]), name, threads)
    elif variant == "paddle":
        prepare = _paddle_model(Path(task["model_dir"]), name, threads)
    else:
        prepare, detail = _sdc_model(Path(task["bundle"]), name, threads, task.get("precision", "fp32"), task.get("target"))
    with np.load(task["inputs"]) as z:
        run = prepare({k: z[k] for k in z.files})
    load_s = time.perf_counter() - t0
    for _ in range(task["warmup"]):
        run()
    times = []
    for _ in range(task["runs"]):
        t0 = time.perf_counter()
        outputs = run()
        times.append(time.perf_counter() - t0)
    np.savez(task["outputs"], **outputs)
    return {"status": "ok", "times": times, "load_seconds": load_s, "detail": detail}


def build_bundle(task: dict) -> dict:
    from sdc.compile.build import build
    from sdc.compile.context import BuildOptions

    subs = task.get("submodels")
    options = BuildOptions(passes=task["passes"], targets=tuple(task["targets"]), submodels=tuple(subs) if subs else None,
                           precisions=tuple(task.get("precisions", ("fp32",))))
    result = build(Path(task["model_dir"]), Path(task["bundle"]), options, force=True)
    return {"status": "ok", "seconds": sum(result.seconds.values()), "warnings": result.warnings}


def measure_gemm(task: dict) -> dict:
    from sdc.bench.flops import gemm_flops_per_s

    flops = gemm_flops_per_s(task["library"], task["size"], task["repeats"], task["threads"])
    return {"status": "ok", "flops_per_s": flops}


def generate_images(task: dict) -> dict:
    """`sdc compare`'s variant: the whole pipeline of a bundle at one precision/target, every prompt x seed.

    One untimed two-step warm-up first (ONNX Runtime grows its arena on the first calls). Saves the
    final latents and images (NHWC in [0, 1]) to task['outputs'].
    """
    import sdc.runtime

    t0 = time.perf_counter()
    pipe = sdc.runtime.load(task["bundle"], provider="cpu", verify="sizes", threads=task["threads"],
                            precision=task.get("precision"), target=task.get("target"))
    load_s = time.perf_counter() - t0
    size = dict(height=task["height"], width=task["width"])
    pipe(task["prompts"][0], num_inference_steps=2, guidance_scale=task["guidance"], seed=0, output_type="latent", **size)
    latents, images, times, steps = [], [], [], []
    for prompt in task["prompts"]:
        for seed in task["seeds"]:
            t0 = time.perf_counter()
            lat = pipe(prompt, num_inference_steps=task["steps"], guidance_scale=task["guidance"], seed=seed,
                       output_type="latent", **size)
            unet = pipe.last_timings.get("unet", 0.0)
            images.append(pipe.decode_latents(lat)[0])
            times.append(time.perf_counter() - t0)
            steps.append(unet / task["steps"])
            latents.append(lat[0])
    np.savez(task["outputs"], latents=np.stack(latents), images=np.stack(images))
    arts = {n: {"artifact": f"{a['target']}/{a['precision']}", "path": a["path"], "bytes": a["bytes"]}
            for n, a in pipe.artifacts.items()}
    return {"status": "ok", "times": times, "unet_step_seconds": steps, "load_seconds": load_s,
            "precision": pipe.precision, "artifacts": arts}


TASKS = {"build": build_bundle, "time": time_variant, "gemm": measure_gemm, "generate": generate_images}


def main(task_path: str) -> int:
    task = json.loads(Path(task_path).read_text(encoding="utf-8"))
    try:
        result = TASKS[task["kind"]](task)
    except Skip as e:
        result = {"status": "skipped", "reason": str(e)}
    except BaseException as e:  # the parent reports it; the traceback goes to stderr for debugging
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    Path(task["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0 if result["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
