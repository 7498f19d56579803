"""`sdc generate`: one image from a bundle, with its parameters stored in the PNG."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, PrecisionOpt, ProviderOpt, TargetOpt, app, describe_artifacts, finish, stderr_console


@app.command()
def generate(
    bundle: BundleArg,
    prompt: Annotated[str, typer.Argument(help="Text prompt.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")] = Path("out.png"),
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Inference steps (bundle default).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (numpy).")] = None,
    height: Annotated[Optional[int], typer.Option("--height", help="Image height, a multiple of 8.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Image width, a multiple of 8.")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm, unipc, or a diffusers class name.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Init image for image-to-image.")] = None,
    strength: Annotated[float, typer.Option("--strength", help="Image-to-image strength in (0, 1].")] = 0.8,
    latents: Annotated[Optional[Path], typer.Option("--latents", help="Initial latents (.npy) for exact reproduction.")] = None,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = None,
    target: TargetOpt = None,
    verify: Annotated[str, typer.Option("--verify", help="Checksum check on load: full (every byte), sizes (fast), none.")] = "full",
) -> None:
    """Generate an image from a bundle (ONNX Runtime; Paddle is not needed)."""
    import numpy as np
    from rich.progress import Progress

    import sdc.runtime
    from sdc.errors import InputError

    t0 = time.perf_counter()
    pipe = sdc.runtime.load(bundle, provider=provider, verify=verify, precision=precision, target=target)
    describe_artifacts(pipe)
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
                  seed=seed, height=height, width=width, scheduler=scheduler)
    params = {k: v for k, v in params.items() if v is not None}
    with Progress(transient=True, console=stderr_console()) as progress:
        task = progress.add_task("denoising", total=None)
        images = pipe(**params, image=init, strength=strength, latents=lat, output_type="pil",
                      callback=lambda i, n, *a: progress.update(task, completed=i + 1, total=n))
    _save_png(images[0], out, dict(params, bundle=str(bundle), strength=strength if init else None, precision=pipe.precision,
                                   latents=str(latents) if latents else None, image=str(image) if image else None))
    finish(True, t0, f"wrote {out}: {images[0].width}x{images[0].height}, {pipe.precision}")


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
