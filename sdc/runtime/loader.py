"""Bundle -> pipeline: check the format, verify checksums, open one ONNX Runtime session per submodel."""

from __future__ import annotations

import json
from pathlib import Path

from sdc.errors import InputError
from sdc.runtime.bundle import SCHEDULER_CONFIG, TOKENIZER_DIRS, bundle_data, read_manifest, safe_join, verify_files
from sdc.runtime.models import OnnxModel, emulated_precision, resolve_providers

VERIFY_MODES = ("full", "sizes", "none")
# The target-tuned artifact each execution provider runs best; every bundle also has a portable graph.
PROVIDER_TARGET = {"CPUExecutionProvider": "ort-cpu", "CUDAExecutionProvider": "ort-cuda",
                   "TensorrtExecutionProvider": "tensorrt"}


def choose_artifact(sub: dict, name: str, target: str = "portable", precision: str = "fp32") -> dict:
    """The artifact for (target, precision); a precision with no tuned artifact falls back to the portable
    graph of that precision, and fp32 to the portable fp32 graph every bundle has."""
    arts = sub.get("artifacts", [])
    for want in ((target, precision), ("portable", precision)):
        for a in arts:
            if (a["target"], a["precision"]) == want:
                return a
    have = ", ".join(f"{a['target']}/{a['precision']}" for a in arts) or "none"
    raise InputError(f"bundle has no {precision} artifact of {name} for {target} (it has {have}); "
                     f"rebuild with --precision {precision} --target {target}, or choose a precision it has")


def bundle_precisions(manifest: dict) -> list[str]:
    """Precisions with an artifact in the bundle, in the build's order (the default first)."""
    seen: list[str] = []
    default = (manifest.get("defaults") or {}).get("precision", "fp32")
    for p in [default] + [a["precision"] for s in manifest["submodels"].values() for a in s["artifacts"]]:
        if p not in seen:
            seen.append(p)
    return seen


def choose_precision(manifest: dict, provider: str, target: str, precision: str | None) -> str:
    """The precision to run: the caller's (which must exist), else the bundle's default when it has an
    artifact this provider's target runs, else the provider's first preference the bundle has."""
    from sdc.runtime.precisions import PRECISIONS, PREFERENCE

    have = bundle_precisions(manifest)
    if precision is not None:
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
        if precision not in have:
            raise InputError(f"bundle has no {precision} artifacts (it has {', '.join(have)}); rebuild it with "
                             f"--precision {','.join(have + [precision])}")
        return precision

    def runs_here(p: str) -> bool:
        return all(any(a["precision"] == p and a["target"] in (target, "portable") for a in s["artifacts"])
                   for s in manifest["submodels"].values())

    default = (manifest.get("defaults") or {}).get("precision", "fp32")
    for p in (default, *PREFERENCE.get(provider, ()), "fp32"):
        if p in have and runs_here(p):
            return p
    return "fp32"


def open_model(root: Path, manifest: dict, name: str, providers: list[str], target: str | None = None,
               threads: int = 0, precision: str = "fp32", emulate: bool = False) -> tuple[OnnxModel, dict]:
    """One submodel's session and the artifact it runs: `target`, else the one tuned for the first provider.
    emulate: an fp16/bf16 artifact on the CPU runs emulated per op (sdc.runtime.emulate), as validation runs it."""
    sub = manifest["submodels"][name]
    art = choose_artifact(sub, name, target or PROVIDER_TARGET.get(providers[0], "portable"), precision)
    low = emulated_precision(art["precision"], providers) if emulate else None
    return OnnxModel(safe_join(Path(root), art["path"]), sub, providers, threads=threads, emulate=low), art


def make_pipeline(family: str, models: dict, tokenizers: dict, scheduler_config: dict, config):
    """The runtime pipeline of a family ("sd", "sdxl" or "flux") over `models`; tokenizers by encoder name."""
    from sdc.runtime.pipeline import StableDiffusionPipeline
    from sdc.runtime.pipeline_flux import FluxPipeline
    from sdc.runtime.pipeline_xl import StableDiffusionXLPipeline

    if family == "sdxl":
        return StableDiffusionXLPipeline(models, tokenizers, scheduler_config, config)
    if family == "flux":
        return FluxPipeline(models, tokenizers, scheduler_config, config)
    return StableDiffusionPipeline(models, tokenizers.get("text_encoder"), scheduler_config, config)


def tokenizer_class(family: str, name: str):
    """The tokenizer a text encoder reads: CLIP's, or T5's for Flux's text_encoder_2."""
    from sdc.runtime.tokenizer import CLIPTokenizer
    from sdc.runtime.tokenizer_t5 import T5Tokenizer

    return T5Tokenizer if (family == "flux" and name == "text_encoder_2") else CLIPTokenizer


def load_tokenizers(root: Path, family: str, names) -> dict:
    """The tokenizer of each text encoder in `names` from its folder in a bundle (or a diffusers folder)."""
    tokenizers = {}
    for name, folder in TOKENIZER_DIRS.items():
        if name in names:
            tok_dir = safe_join(root, folder)
            with bundle_data(tok_dir, "tokenizer"):
                tokenizers[name] = tokenizer_class(family, name).from_folder(tok_dir)
    return tokenizers


def open_engine(root: Path, manifest: dict, name: str, entry: dict):
    """One submodel's TensorRT engine (sdc.runtime.tensorrt_model), refit from the ONNX artifact it was built from."""
    from sdc.runtime.tensorrt_model import TensorrtModel

    sub = manifest["submodels"][name]
    art = next(a for a in sub["artifacts"] if a["path"] == entry["artifact"])  # checked by read_manifest
    return TensorrtModel(safe_join(root, entry["path"]), safe_join(root, art["path"]), sub, entry), art


def choose_here(root: Path, manifest: dict, provider: str, precision: str | None, build_engines: bool):
    """The backend for this machine (sdc.runtime.backend); builds the engines first when that is the choice."""
    import onnxruntime as ort

    from sdc.runtime.backend import choose_backend, tensorrt_here

    has_engines = any(s.get("engines") for s in manifest["submodels"].values())
    if provider == "tensorrt" or (provider == "auto" and (has_engines or build_engines)):
        trt = tensorrt_here()
    else:
        trt = "the bundle has no engines (sdc engines build adds them on a GPU host)"
    choice = choose_backend(provider, manifest, precision, trt, ort.get_available_providers(), build_engines)
    if choice.build:
        from sdc.engines import BuilderSettings
        from sdc.engines.install import add_engines
        from sdc.engines.tensorrt import build_plan
        from sdc.profiles import bundle_profile

        add_engines(root, bundle_profile(manifest, None), BuilderSettings(), trt, build_plan, choice.precision)
        manifest = read_manifest(root)
        choice = choose_backend(provider, manifest, precision, trt, ort.get_available_providers())
    return choice, manifest


def load(path, provider: str = "auto", verify: str = "full", threads: int = 0, target: str | None = None,
         precision: str | None = None, build_engines: bool = False, emulate: bool = False):
    """Load a bundle as a StableDiffusion(XL)Pipeline or FluxPipeline; `pipe.models[name](**inputs)` runs one submodel.

    verify: "full" checks every file's sha256 (seconds for a real model), "sizes" only sizes, "none" nothing.
    target: which artifact to run ("portable" forces the unfused graph); by default the one tuned for
    the provider, falling back to the portable graph.
    precision: fp32, fp16, bf16, int8, int8-dynamic or w8; None takes the bundle's default precision when this
    provider's target has it, else the fastest the bundle has for it (sdc.runtime.precisions.PREFERENCE).
    `pipe.artifacts[name]` says which artifact each submodel runs.
    provider: auto (TensorRT engines -> ONNX Runtime CUDA -> CPU, sdc.runtime.backend), tensorrt, cuda or
    cpu; `pipe.backend` says what was chosen and why. build_engines: build missing TensorRT engines here
    (writes into the bundle, atomically) instead of falling back. emulate: on the CPU, fp16/bf16 artifacts
    (GPU targets) run emulated per op, each result rounded as a GPU would (needs onnx; `sdc eval` uses it to
    score what a GPU artifact draws); `pipe.models[name].emulated` says which.
    """
    from sdc.runtime.pipeline import PipelineConfig

    root = Path(path)
    if verify not in VERIFY_MODES:
        raise InputError(f"verify={verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    manifest = read_manifest(root)
    family = manifest["source"]["family"]
    if verify != "none":
        verify_files(root, manifest, full=verify == "full")
    choice, manifest = choose_here(root, manifest, provider, precision, build_engines)
    if choice.backend == "tensorrt":
        chosen = choice.precision
        opened = {name: open_engine(root, manifest, name, entry) for name, entry in choice.engines.items()}
    else:
        providers = resolve_providers(choice.backend)
        tuned = target or PROVIDER_TARGET.get(providers[0], "portable")
        chosen = choose_precision(manifest, providers[0], tuned, precision)
        opened = {name: open_model(root, manifest, name, providers, tuned, threads, chosen, emulate)
                  for name in manifest["submodels"]}
    models = {name: m for name, (m, _) in opened.items()}
    tokenizers = load_tokenizers(root, family, manifest["submodels"])
    scheduler_path = safe_join(root, SCHEDULER_CONFIG)
    with bundle_data(scheduler_path, "scheduler config"):
        scheduler_config = json.loads(scheduler_path.read_text(encoding="utf-8"))
        if not isinstance(scheduler_config, dict):
            raise ValueError("not a JSON object")
    p, d = manifest["pipeline"], manifest["defaults"]
    config = PipelineConfig(
        scaling_factor=p["vae_scaling_factor"], shift_factor=p.get("vae_shift_factor"), vae_scale_factor=p["vae_downscale"],
        latent_channels=p["latent_channels"], unet_in_channels=p["unet_in_channels"],
        unet_out_channels=p["unet_out_channels"], default_height=d["height"], default_width=d["width"],
        latents_mean=tuple(p["vae_latents_mean"]) if p.get("vae_latents_mean") else None,
        latents_std=tuple(p["vae_latents_std"]) if p.get("vae_latents_std") else None,
        force_zeros_for_empty_prompt=bool(p.get("force_zeros_for_empty_prompt", False)),
        requires_aesthetics_score=bool(p.get("requires_aesthetics_score", False)),
        guidance_embeds=bool(p.get("guidance_embeds", False)),
        rope_axes_dims=tuple(p["rope_axes_dims"]) if p.get("rope_axes_dims") else None,
    )
    pipe = make_pipeline(family, models, tokenizers, scheduler_config, config)
    with bundle_data(scheduler_path, "scheduler config"):
        pipe.make_scheduler(d.get("scheduler"))  # a bad config fails here, not in the middle of a generation
    pipe.manifest = manifest
    pipe.defaults = d
    pipe.precision = chosen
    pipe.backend = choice
    pipe.artifacts = {name: art for name, (_, art) in opened.items()}
    return pipe
