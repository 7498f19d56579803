"""Bundle -> pipeline: check the format, verify checksums, open one ONNX Runtime session per submodel."""

from __future__ import annotations

import json
from pathlib import Path

from sdc.errors import BundleError, InputError
from sdc.runtime.bundle import SCHEDULER_CONFIG, TOKENIZER_DIRS, read_manifest, safe_join, verify_files
from sdc.runtime.models import OnnxModel, resolve_providers

VERIFY_MODES = ("full", "sizes", "none")
# The target-tuned artifact each execution provider runs best; every bundle also has a portable graph.
PROVIDER_TARGET = {"CPUExecutionProvider": "ort-cpu", "CUDAExecutionProvider": "ort-cuda",
                   "TensorrtExecutionProvider": "tensorrt"}


def choose_artifact(sub: dict, name: str, target: str = "portable", precision: str = "fp32") -> dict:
    """The artifact for a target, falling back to the portable fp32 graph every bundle has."""
    arts = sub.get("artifacts", [])
    for want in ((target, precision), ("portable", "fp32")):
        for a in arts:
            if (a["target"], a["precision"]) == want:
                return a
    raise BundleError(f"manifest.json: submodel {name} has no usable artifact; rebuild the bundle")


def open_model(root: Path, manifest: dict, name: str, providers: list[str], target: str | None = None,
               threads: int = 0) -> tuple[OnnxModel, dict]:
    """One submodel's session and the artifact it runs: `target`, else the one tuned for the first provider."""
    sub = manifest["submodels"][name]
    art = choose_artifact(sub, name, target or PROVIDER_TARGET.get(providers[0], "portable"))
    return OnnxModel(safe_join(Path(root), art["path"]), sub, providers, threads=threads), art


def load(path, provider: str = "auto", verify: str = "full", threads: int = 0, target: str | None = None):
    """Load a bundle as a StableDiffusionPipeline; `pipe.models[name](**inputs)` runs one submodel.

    verify: "full" checks every file's sha256 (seconds for a real model), "sizes" only sizes, "none" nothing.
    target: which artifact to run ("portable" forces the unfused graph); by default the one tuned for
    the provider, falling back to the portable graph.
    """
    from sdc.runtime.pipeline import PipelineConfig, StableDiffusionPipeline
    from sdc.runtime.tokenizer import CLIPTokenizer

    root = Path(path)
    if verify not in VERIFY_MODES:
        raise InputError(f"verify={verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    manifest = read_manifest(root)
    if verify != "none":
        verify_files(root, manifest, full=verify == "full")
    providers = resolve_providers(provider)
    models = {name: open_model(root, manifest, name, providers, target, threads)[0] for name in manifest["submodels"]}
    tok_dir = safe_join(root, TOKENIZER_DIRS["text_encoder"])
    tokenizer = CLIPTokenizer.from_folder(tok_dir)
    scheduler_config = json.loads(safe_join(root, SCHEDULER_CONFIG).read_text(encoding="utf-8"))
    p, d = manifest["pipeline"], manifest["defaults"]
    config = PipelineConfig(
        scaling_factor=p["vae_scaling_factor"], shift_factor=p["vae_shift_factor"], vae_scale_factor=p["vae_downscale"],
        latent_channels=p["latent_channels"], unet_in_channels=p["unet_in_channels"],
        unet_out_channels=p["unet_out_channels"], default_height=d["height"], default_width=d["width"],
    )
    pipe = StableDiffusionPipeline(models, tokenizer, scheduler_config, config)
    pipe.manifest = manifest
    pipe.defaults = d
    return pipe
