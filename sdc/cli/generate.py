"""`sdc generate`: one image from a bundle, with its parameters stored in the PNG."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, PrecisionOpt, ProviderOpt, TargetOpt, app, describe_artifacts, finish, stderr_console

XL = "SDXL"  # help panels of the family options
FLUX = "Flux"
# which families take each family option (keyword of the pipeline call -> families)
FAMILY_OPTIONS = {"prompt_2": ("sdxl", "flux"), "negative_prompt_2": ("sdxl", "flux"), "true_cfg_scale": ("flux",),
                  "max_sequence_length": ("flux",)}


@app.command()
def generate(
    bundle: BundleArg,
    prompt: Annotated[str, typer.Argument(help="Text prompt.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")] = Path("out.png"),
    negative: Annotated[Optional[str], typer.Option("--negative", help="Negative prompt (SDXL: none given means zero negative embeddings when the model asks for them).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Inference steps (bundle default).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Guidance scale: classifier-free (SD, SDXL), or the guidance embedding's input (Flux dev).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (numpy).")] = None,
    height: Annotated[Optional[int], typer.Option("--height", help="Image height, a multiple of 8 (Flux: 16).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Image width, a multiple of 8 (Flux: 16).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm, unipc, or a diffusers class name (Flux: its flow-matching scheduler only).")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Init image for image-to-image.")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Image-to-image strength in (0, 1]; default 0.8 (SD), 0.3 (SDXL), 0.6 (Flux).")] = None,
    latents: Annotated[Optional[Path], typer.Option("--latents", help="Initial latents (.npy) for exact reproduction (Flux: packed, as diffusers takes them).")] = None,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = None,
    target: TargetOpt = None,
    build_engines: Annotated[bool, typer.Option("--build-engines", help="With TensorRT here but no engine for this GPU in the bundle: build them into the bundle first (instead of falling back to ONNX Runtime).")] = False,
    verify: Annotated[str, typer.Option("--verify", help="Checksum check on load: full (every byte), sizes (fast), none.")] = "full",
    prompt_2: Annotated[Optional[str], typer.Option("--prompt-2", help="SDXL, Flux: prompt for the second text encoder (default: the prompt; Flux: T5).", rich_help_panel=XL)] = None,
    negative_2: Annotated[Optional[str], typer.Option("--negative-2", help="SDXL, Flux: negative prompt for the second text encoder.", rich_help_panel=XL)] = None,
    guidance_rescale: Annotated[Optional[float], typer.Option("--guidance-rescale", help="SDXL: rescale the guided prediction's std towards the prompt's (0 = off, 0.7 typical).", rich_help_panel=XL)] = None,
    original_size: Annotated[Optional[str], typer.Option("--original-size", help="SDXL time id: the size the model should believe the source had, HxW (default: the output size).", rich_help_panel=XL)] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help="SDXL time id: crop top-left corner, TOP,LEFT (default 0,0).", rich_help_panel=XL)] = None,
    target_size: Annotated[Optional[str], typer.Option("--target-size", help="SDXL time id: target size HxW (default: the output size).", rich_help_panel=XL)] = None,
    negative_original_size: Annotated[Optional[str], typer.Option("--negative-original-size", help="SDXL: original size for the negative branch, HxW.", rich_help_panel=XL)] = None,
    negative_target_size: Annotated[Optional[str], typer.Option("--negative-target-size", help="SDXL: target size for the negative branch, HxW.", rich_help_panel=XL)] = None,
    aesthetic_score: Annotated[Optional[float], typer.Option("--aesthetic-score", help="SDXL refiner: aesthetic score time id (default 6.0).", rich_help_panel=XL)] = None,
    negative_aesthetic_score: Annotated[Optional[float], typer.Option("--negative-aesthetic-score", help="SDXL refiner: negative aesthetic score (default 2.5).", rich_help_panel=XL)] = None,
    denoising_end: Annotated[Optional[float], typer.Option("--denoising-end", help="SDXL: stop after this fraction of the schedule (a base handing over).", rich_help_panel=XL)] = None,
    denoising_start: Annotated[Optional[float], typer.Option("--denoising-start", help="SDXL: start at this fraction of the schedule (a refiner taking over; needs --image).", rich_help_panel=XL)] = None,
    refiner: Annotated[Optional[Path], typer.Option("--refiner", help="SDXL: a refiner bundle that finishes the base's latents (ensemble of expert denoisers).", rich_help_panel=XL)] = None,
    handover: Annotated[float, typer.Option("--handover", help="SDXL with --refiner: fraction of the schedule the base runs before the refiner takes over.", rich_help_panel=XL)] = 0.8,
    true_cfg: Annotated[Optional[float], typer.Option("--true-cfg", help="Flux: true classifier-free guidance scale; above 1 with --negative, two transformer passes per step (default 1: off).", rich_help_panel=FLUX)] = None,
    max_sequence_length: Annotated[Optional[int], typer.Option("--max-sequence-length", help="Flux: T5 tokens the prompt is padded or cut to (default 512; schnell checkpoints use 256).", rich_help_panel=FLUX)] = None,
) -> None:
    """Generate an image from a bundle (TensorRT engines or ONNX Runtime; Paddle is not needed).

    SDXL bundles take the options under "SDXL"; with --refiner the base runs the first --handover of
    the schedule and a refiner bundle the rest, as diffusers' base + refiner pipelines do.
    Flux bundles take --prompt-2 / --negative-2 (T5) and the options under "Flux".
    """
    import numpy as np

    import sdc.runtime
    from sdc.errors import InputError

    t0 = time.perf_counter()
    pipe = sdc.runtime.load(bundle, provider=provider, verify=verify, precision=precision, target=target,
                            build_engines=build_engines)
    describe_artifacts(pipe)
    xl = dict(prompt_2=prompt_2, negative_prompt_2=negative_2, guidance_rescale=guidance_rescale,
              original_size=_pair("--original-size", original_size, "x"), crops_coords_top_left=_pair("--crop", crop, ","),
              target_size=_pair("--target-size", target_size, "x"),
              negative_original_size=_pair("--negative-original-size", negative_original_size, "x"),
              negative_target_size=_pair("--negative-target-size", negative_target_size, "x"),
              aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
              denoising_end=denoising_end, denoising_start=denoising_start)
    xl.update(true_cfg_scale=true_cfg, max_sequence_length=max_sequence_length)
    xl = {k: v for k, v in xl.items() if v is not None}
    family = pipe.manifest["source"]["family"]
    wrong = [k for k in xl if family not in FAMILY_OPTIONS.get(k, ("sdxl",))] + (["refiner"] if refiner and family != "sdxl" else [])
    if wrong:
        flags = ", ".join(FLAG_NAMES.get(k, f"--{k.replace('_', '-')}") for k in wrong)
        takes = sorted({f for k in wrong for f in FAMILY_OPTIONS.get(k, ("sdxl",))})
        raise InputError(f"{flags}: options for {' and '.join(f.upper() if f == 'sdxl' else f.title() for f in takes)} "
                         f"bundles, and {bundle} is a {pipe.manifest['source']['pipeline_class']} bundle")
    init = None
    if image is not None:
        from PIL import Image

        if not image.is_file():
            raise InputError(f"{image}: init image not found")
        init = Image.open(image).convert("RGB")
    lat = None
    if latents is not None:
        if not latents.is_file() or latents.suffix != ".npy":
            raise InputError(f"{latents}: expected an existing .npy file of initial latents")
        lat = np.load(latents, allow_pickle=False)
    params = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                  seed=seed, height=height, width=width, scheduler=scheduler, strength=strength if init else None, **xl)
    params = {k: v for k, v in params.items() if v is not None}
    if refiner is not None:
        images = _base_and_refiner(pipe, refiner, params, init, lat, handover, provider, verify, precision, target)
    else:
        images = _run(pipe, "denoising", **params, image=init, latents=lat, output_type="pil")
    _save_png(images[0], out, dict(params, bundle=str(bundle), precision=pipe.precision, refiner=str(refiner) if refiner else None,
                                   handover=handover if refiner else None,
                                   latents=str(latents) if latents else None, image=str(image) if image else None))
    finish(True, t0, f"wrote {out}: {images[0].width}x{images[0].height}, {pipe.precision}"
                     f"{f', refined by {refiner.name} from {handover:.0%} of the schedule' if refiner else ''}")


# pipeline keywords whose flag is not the keyword with dashes
FLAG_NAMES = {"negative_prompt_2": "--negative-2", "crops_coords_top_left": "--crop", "true_cfg_scale": "--true-cfg"}


def _run(pipe, label: str, **kwargs):
    from rich.progress import Progress

    with Progress(transient=True, console=stderr_console()) as progress:
        task = progress.add_task(label, total=None)
        return pipe(**kwargs, callback=lambda i, n, *a: progress.update(task, completed=i, total=n))


def _base_and_refiner(pipe, refiner: Path, params: dict, init, lat, handover: float, provider, verify, precision, target):
    """diffusers' ensemble of expert denoisers: the base stops at `handover`, the refiner starts there."""
    import sdc.runtime
    from sdc.errors import InputError

    if init is not None or "denoising_end" in params or "denoising_start" in params:
        raise InputError("--refiner runs text-to-image with a hand-over at --handover; leave out --image, "
                         "--denoising-end and --denoising-start")
    ref = sdc.runtime.load(refiner, provider=provider, verify=verify, precision=precision, target=target)
    if ref.manifest["source"]["family"] != "sdxl":
        raise InputError(f"--refiner {refiner}: not an SDXL bundle ({ref.manifest['source']['pipeline_class']})")
    latents = _run(pipe, "base", **params, latents=lat, denoising_end=handover, output_type="latent")
    shared = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "num_inference_steps", "guidance_scale",
              "guidance_rescale", "seed", "scheduler", "aesthetic_score", "negative_aesthetic_score")
    return _run(ref, "refiner", **{k: params[k] for k in shared if k in params}, image=latents,
                denoising_start=handover, output_type="pil")


def _pair(flag: str, text: str | None, sep: str) -> tuple[int, int] | None:
    """'1024x768' (sep 'x') or '0,32' (sep ',') -> (1024, 768); a clear error otherwise."""
    from sdc.errors import InputError

    if text is None:
        return None
    parts = text.lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        example = "1024x1024" if sep == "x" else "0,0"
        raise InputError(f"{flag} {text!r}: expected two non-negative integers like {example}")
    return int(parts[0]), int(parts[1])


def _save_png(img, path: Path, params: dict) -> None:
    """PNG with the generation parameters in a text chunk, so an image says how it was made."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from sdc import __version__

    info = PngInfo()
    record = {k: v for k, v in params.items() if v is not None}
    info.add_text("sdc", json.dumps(dict(record, sdc_version=__version__)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, pnginfo=info)
