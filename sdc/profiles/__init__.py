"""Shape profiles: the sizes a bundle's graphs serve, min / opt / max of every dynamic dim, from one statement.

A user states what they will generate: images per call (`--batch 1:2:4`), image sizes (`--profile
512x512` static, or `256x256:512x512:1024x768` min:opt:max, or a named profile), and for Flux the T5 text
length. Every submodel's dims follow from it with the pipeline's own arithmetic: latents are the image
over the VAE's downscale; the text encoders and the UNet run classifier-free guidance on both halves at
once (batch min = images without guidance, opt and max = twice the images); Flux's transformer takes
(H/2f)(W/2f) image tokens after the T5 tokens (twice the images only with true CFG, so max only). A
TensorRT engine is built with one optimization profile per profile (the dims below), and the build
validates each graph at the profile's corners, so what is validated is what an engine serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdc.errors import InputError

_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Range:
    """min <= opt <= max, all positive."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 0 < self.min <= self.opt <= self.max:
            raise InputError(f"range {self.min}:{self.opt}:{self.max}: need 0 < min <= opt <= max")

    @classmethod
    def static(cls, value: int) -> Range:
        return cls(value, value, value)

    @classmethod
    def parse(cls, text: str, flag: str) -> Range:
        """'4' (static) or '1:2:4' (min:opt:max)."""
        parts = text.split(":")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
            raise InputError(f"{flag} {text!r}: give N or MIN:OPT:MAX, e.g. 1:2:4")
        values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        try:
            return cls(*values)
        except InputError as e:
            raise InputError(f"{flag} {text!r}: {e}") from None

    def map(self, f) -> Range:
        return Range(f(self.min), f(self.opt), f(self.max))

    def to_json(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class Profile:
    name: str
    batch: Range  # images per call (prompts x images per prompt)
    height: Range  # pixels
    width: Range
    text: Range | None = None  # Flux: T5 tokens (max_sequence_length); None: 512, diffusers' default
    family: str | None = None  # a named profile's family

    def to_json(self) -> dict:
        out = {"name": self.name, "batch": self.batch.to_json(), "height": self.height.to_json(),
               "width": self.width.to_json()}
        if self.text is not None:
            out["text"] = self.text.to_json()
        return out


NAMED = {p.name: p for p in (
    Profile("sd-512", Range(1, 1, 4), Range.static(512), Range.static(512), family="sd"),
    Profile("sd-dynamic", Range(1, 1, 4), Range(256, 512, 1024), Range(256, 512, 1024), family="sd"),
    Profile("sdxl-1024", Range(1, 1, 2), Range.static(1024), Range.static(1024), family="sdxl"),
    Profile("flux-512-1024", Range(1, 1, 1), Range(512, 1024, 1024), Range(512, 1024, 1024), Range(256, 512, 512),
            family="flux"),
)}


def parse_profile(text: str, batch: str | None, family: str, text_length: str | None = None) -> Profile:
    """`--profile NAME|HxW|HxW:HxW:HxW` with `--batch` (and Flux's `--text-length`) as a Profile."""
    if text in NAMED:
        p = NAMED[text]
        if p.family != family:
            raise InputError(f"--profile {text}: a {p.family} profile, and this is a {family} model; choose from "
                             f"{', '.join(n for n, q in NAMED.items() if q.family == family) or 'HxW sizes'}")
        batch_range = Range.parse(batch, "--batch") if batch else p.batch
        t = Range.parse(text_length, "--text-length") if text_length else p.text
        return Profile(p.name, batch_range, p.height, p.width, t, family)
    sizes = text.lower().split(":")
    if len(sizes) not in (1, 3) or not all(_SIZE.match(s) for s in sizes):
        raise InputError(f"--profile {text!r}: give a name ({', '.join(NAMED)}), HxW, or MIN:OPT:MAX sizes like "
                         "256x256:512x512:1024x768")
    hw = [tuple(int(v) for v in _SIZE.match(s).groups()) for s in sizes] * (3 if len(sizes) == 1 else 1)
    try:
        h, w = Range(*(s[0] for s in hw)), Range(*(s[1] for s in hw))
    except InputError as e:
        raise InputError(f"--profile {text!r}: heights and widths each {e}") from None
    t = Range.parse(text_length, "--text-length") if text_length else None
    if t is not None and family != "flux":
        raise InputError(f"--text-length: the T5 text length of Flux models; this is a {family} model")
    return Profile(text, Range.parse(batch or "1", "--batch"), h, w, t, family)


@dataclass(frozen=True)
class Facts:
    """What the arithmetic needs from the model: read from its configs (sdc.graphs)."""

    family: str
    downscale: int  # the VAE's
    multiple: int  # latent sizes must be multiples of this (UNet levels; 2 for Flux's packing)
    clip_sequence: int = 77

    @classmethod
    def of(cls, model_dir: Path, family: str) -> Facts:
        from sdc.graphs import load_config
        from sdc.graphs.configs import load_model_index
        from sdc.graphs.specs import unet_multiple

        index = load_model_index(model_dir)
        down = load_config(model_dir, "vae_decoder").downscale if index.has("vae") else 8
        if family == "flux":
            multiple = 2
        else:
            multiple = unet_multiple(load_config(model_dir, "unet")) if index.has("unet") else 1
        clip = next((load_config(model_dir, n).max_position_embeddings for n in ("text_encoder", "text_encoder_2")
                     if index.has(n) and not (family == "flux" and n == "text_encoder_2")), 77)
        return cls(family, down, multiple, clip)

    @classmethod
    def of_manifest(cls, manifest: dict) -> Facts:
        """The same facts from a bundle's manifest (for `sdc engines build --profile` on a built bundle)."""
        family, p = manifest["source"]["family"], manifest["pipeline"]
        clip = 77
        for name in ("text_encoder", "text_encoder_2"):
            sub = manifest["submodels"].get(name)
            if sub and not (family == "flux" and name == "text_encoder_2"):
                clip = next((t["shape"][1] for t in sub["inputs"] if t["name"] == "input_ids"
                             and len(t["shape"]) == 2 and isinstance(t["shape"][1], int)), clip)
                break
        return cls(family, int(p["vae_downscale"]), int(p.get("unet_latent_multiple") or 1), clip)


def check_sizes(profile: Profile, facts: Facts) -> None:
    step = facts.downscale * facts.multiple
    for what, r in (("height", profile.height), ("width", profile.width)):
        for v in (r.min, r.opt, r.max):
            if v % step:
                raise InputError(f"--profile {profile.name}: {what} {v} is off the model's grid; sizes must be "
                                 f"multiples of {step} (VAE downscale {facts.downscale} x latent multiple {facts.multiple})")


def submodel_dims(profile: Profile, name: str, spec, facts: Facts) -> dict[str, Range]:
    """{dim name: Range} for every dynamic dim of a submodel's inputs and outputs."""
    check_sizes(profile, facts)
    b, f = profile.batch, facts.downscale
    guided = Range(b.min, 2 * b.opt, 2 * b.max)  # CFG runs the negative half beside the prompts
    flux_batch = Range(b.min, b.opt, 2 * b.max)  # Flux: twice only with true CFG
    text = profile.text or Range.static(512)
    image_tokens = Range(*((h // (2 * f)) * (w // (2 * f)) for h, w in
                           zip(profile.height.to_json(), profile.width.to_json())))
    t5 = facts.family == "flux" and name == "text_encoder_2"
    known = {
        "batch": (flux_batch if facts.family == "flux" and name in ("transformer", "text_encoder_2")
                  else guided if name.startswith("text_encoder") or name == "unet" else b),
        "sequence": text if t5 else Range.static(facts.clip_sequence),
        "latent_height": profile.height.map(lambda v: v // f), "latent_width": profile.width.map(lambda v: v // f),
        "height": profile.height, "width": profile.width,
        "image_tokens": image_tokens, "text_tokens": text,
        "tokens": Range(image_tokens.min + text.min, image_tokens.opt + text.opt, image_tokens.max + text.max),
    }
    dims: dict[str, Range] = {}
    tensors = list(spec.inputs) + list(spec.outputs) if not isinstance(spec, dict) else spec["inputs"] + spec["outputs"]
    for t in tensors:
        for d in (t["shape"] if isinstance(t, dict) else t.shape):
            if isinstance(d, str):
                if d not in known:
                    raise InputError(f"--profile {profile.name}: {name} has a dim {d!r} no profile defines")
                dims[d] = known[d]
    return dims


def bundle_profile(manifest: dict, text: str | None, batch: str | None = None,
                   text_length: str | None = None) -> dict:
    """A profile of a built bundle as the manifest records it ({name, batch, height, width, [text], dims}):
    the one named `text` (or the first) among its recorded profiles, else `text` parsed and derived
    from the manifest's facts and contracts (a profile the build never validated: said by the caller)."""
    recorded = manifest.get("profiles") or []
    if text is None or (batch is None and text_length is None and any(p["name"] == text for p in recorded)):
        if not recorded:
            raise InputError("the bundle records no shape profile; give --profile (e.g. sd-512) or rebuild it with "
                             "sdc build --profile")
        return next((p for p in recorded if text is None or p["name"] == text), recorded[0])
    facts = Facts.of_manifest(manifest)
    profile = parse_profile(text, batch, facts.family, text_length)
    dims = {name: {d: r.to_json() for d, r in submodel_dims(profile, name, sub, facts).items()}
            for name, sub in manifest["submodels"].items()}
    return dict(profile.to_json(), dims=dims)


def corners(dims: dict[str, Range]) -> tuple[dict[str, int], ...]:
    """The min and max corners (one when the profile is static): the shapes a build validates at."""
    lo, hi = {d: r.min for d, r in dims.items()}, {d: r.max for d, r in dims.items()}
    return (lo,) if lo == hi else (lo, hi)
