"""Stage `bundle`: tokenizer, scheduler config, manifest and checksums, then the atomic rename into place."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

from sdc import __version__
from sdc.compile.context import BuildContext
from sdc.compile.output import OWNER, replace_dir
from sdc.graphs import folder_of
from sdc.graphs.configs import read_json
from sdc.runtime.bundle import (
    FORMAT, FORMAT_VERSION, MANIFEST, SCHEDULER_CONFIG, SUMMARY, TOKENIZER_DIRS, file_table,
)

DEFAULT_STEPS = {"sd": 50, "sdxl": 50, "flux": 28}  # diffusers' defaults of each family's pipeline
DEFAULT_GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "flux": 3.5}


def copy_assets(ctx: BuildContext) -> None:
    """Tokenizers and the scheduler config, copied as they are (they are small and the runtime reads them)."""
    for sub_name, tok_dir in TOKENIZER_DIRS.items():
        src = ctx.model_dir / tok_dir
        if sub_name in ctx.submodels and src.is_dir():
            dst = ctx.work / tok_dir
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix in (".json", ".txt", ".model"):
                    shutil.copyfile(f, dst / f.name)
    sched = ctx.model_dir / "scheduler" / "scheduler_config.json"
    read_json(sched)  # fails with a clear message when missing or broken
    (ctx.work / SCHEDULER_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sched, ctx.work / SCHEDULER_CONFIG)


def pipeline_config(ctx: BuildContext) -> dict:
    """Facts about the source the runtime pipeline needs (VAE scaling, latent geometry)."""
    from sdc.graphs import load_config
    from sdc.graphs.specs import unet_multiple

    vae = load_config(ctx.model_dir, "vae_decoder")
    flux = {}
    if ctx.index.family == "flux":  # tokens of 2x2-packed latents; the latent grid must be even
        tf = load_config(ctx.model_dir, "transformer")
        in_ch, out_ch, sample, multiple = tf.in_channels, tf.out_channels, vae.sample_size // vae.downscale, 2
        flux = {"guidance_embeds": tf.guidance_embeds, "rope_axes_dims": list(tf.axes_dims_rope)}
    else:
        unet = load_config(ctx.model_dir, "unet")
        in_ch, out_ch, sample = unet.in_channels, unet.out_channels, unet.sample_size
        multiple = unet_multiple(unet)
    return {
        "vae_scaling_factor": vae.scaling_factor,
        "vae_shift_factor": vae.shift_factor,
        "vae_downscale": vae.downscale,
        "latent_channels": vae.latent_channels,
        "unet_in_channels": in_ch,  # the denoiser's (UNet, or Flux transformer per token)
        "unet_out_channels": out_ch,
        "unet_sample_size": sample,
        "unet_latent_multiple": multiple,
        "vae_latents_mean": list(vae.latents_mean) if vae.latents_mean else None,
        "vae_latents_std": list(vae.latents_std) if vae.latents_std else None,
        "force_zeros_for_empty_prompt": ctx.index.force_zeros_for_empty_prompt,
        "requires_aesthetics_score": ctx.index.requires_aesthetics_score,
        **flux,
    }


def manifest_for(ctx: BuildContext, files: dict) -> dict:
    config = pipeline_config(ctx)
    size = config["unet_sample_size"] * config["vae_downscale"]
    sched = read_json(ctx.work / SCHEDULER_CONFIG)
    submodels = {}
    for name, sub in ctx.submodels.items():
        submodels[name] = dict(
            sub.spec.to_json(),
            source_folder=folder_of(name),
            program_passes=sub.program_passes,
            artifacts=[
                {
                    "target": a.target, "precision": a.precision, "path": a.path, "data_paths": a.data_paths,
                    "sha256": files[a.path]["sha256"],
                    "bytes": files[a.path]["bytes"] + sum(files[d]["bytes"] for d in a.data_paths),
                    "passes": a.passes, "validation": a.validation.to_json() if a.validation else None,
                    **({"precision_record": a.precision_record} if a.precision_record else {}),
                    **({"weights": a.weights} if a.weights else {}),
                }
                for a in sub.artifacts
            ],
            engines=[],
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sdc_version": __version__,
        "created_by": f"sdc {__version__} build",
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "source": {
            "family": ctx.index.family,
            "pipeline_class": ctx.index.pipeline_class,
            "name": ctx.model_dir.resolve().name,
            "weights_sha256": ctx.weights_sha256,
        },
        "pipeline": config,
        "defaults": {
            "scheduler": sched.get("_class_name"),
            "height": size, "width": size,
            "steps": DEFAULT_STEPS[ctx.index.family], "guidance_scale": DEFAULT_GUIDANCE[ctx.index.family],
            "precision": ctx.options.precisions[0],
        },
        "submodels": submodels,
        **({"profiles": [dict(ctx.options.profile.to_json(), dims={
            n: {d: r.to_json() for d, r in sub.profile_dims.items()} for n, sub in ctx.submodels.items()})]}
           if ctx.options.profile is not None else {}),
        "files": files,
    }


def summary_text(manifest: dict) -> str:
    """A human-readable page beside the manifest (no timings: it must hash the same on every build)."""
    lines = [f"sdc bundle of {manifest['source']['name']} ({manifest['source']['pipeline_class']})",
             f"format {manifest['format']} v{manifest['format_version']}, sdc {manifest['sdc_version']}", ""]
    for name, sub in manifest["submodels"].items():
        for a in sub["artifacts"]:
            v = a["validation"] or {}
            lines.append(f"{name:16s} {a['target']}/{a['precision']:5s} {a['bytes'] / 2**20:9.1f} MiB  "
                         f"max abs err {v.get('max_abs', float('nan')):.2e}  {'ok' if v.get('passed') else 'FAILED'}")
    return "\n".join(lines) + "\n"


def bundle_stage(ctx: BuildContext) -> dict:
    """Write assets, summary and manifest into the work dir, then rename it to the output path."""
    (ctx.work / OWNER).unlink(missing_ok=True)
    copy_assets(ctx)
    draft = manifest_for(ctx, file_table(ctx.work, with_hash=False))  # sizes only: the summary has no hashes
    (ctx.work / SUMMARY).write_text(summary_text(draft))
    manifest = manifest_for(ctx, file_table(ctx.work))
    (ctx.work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    replace_dir(ctx.work, ctx.out)
    return manifest
