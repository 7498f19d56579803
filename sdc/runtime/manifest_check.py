"""Type and path checks of a bundle's manifest, run when the bundle is opened.

A manifest is input from whoever handed over the bundle: every field the runtime and the CLI read
is checked here, once, so that a malformed one gives a one-line BundleError naming the field, never
a KeyError/TypeError deep inside a generation, and every path it names (artifacts, their external
data, engines, the file table, the tokenizer and scheduler the layout fixes) is relative,
normalised, inside the bundle, not through a symlink that leaves it, and covered by the checksum
table. The external-data locations written inside each ONNX graph are checked too
(sdc.runtime.onnx_refs), since ONNX Runtime would follow them.

Hand-written rather than a JSON-Schema library: the runtime keeps its dependencies to numpy,
onnxruntime and tokenizers, and the messages must name the field and the fix in one line.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from sdc.errors import BundleError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUMBER = (int, float)
# source.family values whose pipeline sdc.runtime has (sd: 1.x / 2.x, sdxl: base and refiner).
RUNTIME_FAMILIES = ("sd", "sdxl", "flux")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


class _Where:
    """The manifest path of a value (`submodels.unet.artifacts[2].path`) for error messages."""

    def __init__(self, manifest_path: Path):
        self.file = manifest_path

    def fail(self, field: str, problem: str) -> BundleError:
        return BundleError(f"{self.file}: {field}: {problem}; the bundle is malformed, rebuild it or ask its author")


def _typed(where: _Where, field: str, value, kinds, what: str, optional: bool = False):
    if value is None and optional:
        return value
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise where.fail(field, f"expected {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise where.fail(field, f"expected {what}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _obj(where: _Where, parent: dict, key: str, prefix: str, optional: bool = False) -> dict:
    if key not in parent:
        if optional:
            return {}
        raise where.fail(f"{prefix}{key}", "missing")
    return _typed(where, f"{prefix}{key}", parent[key], dict, "an object")


def _field(where: _Where, parent: dict, key: str, prefix: str, kinds, what: str, optional: bool = False):
    if key not in parent:
        if optional:
            return None
        raise where.fail(f"{prefix}{key}", "missing")
    return _typed(where, f"{prefix}{key}", parent[key], kinds, what, optional)


def check_rel_path(where: _Where, field: str, rel) -> str:
    """A manifest path: a non-empty relative POSIX path, normalised (no `.`, `..`, empty parts, backslashes,
    drive letters or NUL)."""
    _typed(where, field, rel, str, "a relative path")
    if not rel or "\x00" in rel or "\\" in rel or PureWindowsPath(rel).drive or rel.startswith("/"):
        raise where.fail(field, f"path {rel!r} is absolute or not a POSIX path")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or PurePosixPath(rel).as_posix() != rel:
        raise where.fail(field, f"path {rel!r} is not normalised or escapes the bundle")
    return rel


def inside(root: Path, rel: str) -> Path:
    """The file `rel` names, resolved (symlinks followed); refused when that leaves the bundle."""
    real_root = root.resolve()
    full = (root / rel).resolve()
    if full != real_root and not full.is_relative_to(real_root):
        raise BundleError(f"{root / rel}: resolves outside the bundle (a symlink leaves it); the bundle is malformed")
    return full


def _spec_tensors(where: _Where, sub: dict, key: str, prefix: str) -> None:
    tensors = _field(where, sub, key, prefix, list, "a list of tensors")
    if not tensors:
        raise where.fail(f"{prefix}{key}", "empty")
    for i, t in enumerate(tensors):
        p = f"{prefix}{key}[{i}]"
        _typed(where, p, t, dict, "an object")
        _field(where, t, "name", p + ".", str, "a string")
        dtype = _field(where, t, "dtype", p + ".", str, "a dtype name")
        if dtype not in DTYPES:
            raise where.fail(p + ".dtype", f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        shape = _field(where, t, "shape", p + ".", list, "a list of dims")
        for j, d in enumerate(shape):
            _typed(where, f"{p}.shape[{j}]", d, (int, str), "a size or a dim name")


def _check_record(w: _Where, record: dict, prefix: str) -> None:
    """The parts of a precision record that `sdc inspect` and the build summary read."""
    _field(w, record, "islands", prefix, list, "a list", optional=True)
    ops = _field(w, record, "quantized_ops", prefix, dict, "an object of counts", optional=True) or {}
    for op, n in ops.items():
        _typed(w, f"{prefix}quantized_ops[{op!r}]", n, int, "a count")
    sens = _field(w, record, "sensitivity", prefix, dict, "an object", optional=True) or {}
    _field(w, sens, "excluded", prefix + "sensitivity.", list, "a list", optional=True)


_KEY = re.compile(r"[0-9a-f]{16}")
_SETTINGS = {"optimization_level": int, "workspace_mib": int, "weight_stripped": bool}
_ENVIRONMENT = {"tensorrt": str, "cuda_major": int, "gpu_name": str, "compute_capability": str}


def _check_engine(w: _Where, e: dict, prefix: str, name: str, sub: dict, files: dict, precisions) -> None:
    """An engine entry: the facts the runtime compares with this machine before it loads the plan."""
    if _field(w, e, "submodel", prefix, str, "a submodel name") != name:
        raise w.fail(prefix + "submodel", f"{e['submodel'][:40]!r} is listed under {name}")
    key = _field(w, e, "key", prefix, str, "a 16-digit hex key")
    if not _KEY.fullmatch(key) or e["path"].split("/")[:2] != ["engines", key]:
        raise w.fail(prefix + "key", f"{key[:40]!r} is not a 16-digit hex key naming the plan's folder")
    if _field(w, e, "precision", prefix, str, "a precision name") not in precisions:
        raise w.fail(prefix + "precision", f"unknown precision {e['precision'][:40]!r}")
    if _field(w, e, "artifact", prefix, str, "an artifact path") not in [a.get("path") for a in sub["artifacts"]]:
        raise w.fail(prefix + "artifact", f"{e['artifact'][:80]!r} is not one of {name}'s artifacts")
    _field(w, e, "profile", prefix, str, "a profile name")
    for dim, r in _field(w, e, "dims", prefix, dict, "an object of [min, opt, max]").items():
        if not (isinstance(r, list) and len(r) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                            for v in r) and r[0] <= r[1] <= r[2]):
            raise w.fail(f"{prefix}dims[{dim!r}]", f"expected [min, opt, max] positive integers in order, got {r!r}"[:160])
    settings = _field(w, e, "settings", prefix, dict, "an object")
    for field, kind in _SETTINGS.items():
        _field(w, settings, field, prefix + "settings.", kind, "true or false" if kind is bool else "a number")
    if set(settings) - set(_SETTINGS):
        raise w.fail(prefix + "settings", f"unknown fields {sorted(set(settings) - set(_SETTINGS))} (a newer sdc's?)")
    env = _field(w, e, "environment", prefix, dict, "an object")
    for field, kind in _ENVIRONMENT.items():
        _field(w, env, field, prefix + "environment.", kind, f"a {'number' if kind is int else 'string'}")
    if _field(w, e, "sha256", prefix, str, "a sha256 hex digest") != files[e["path"]]["sha256"]:
        raise w.fail(prefix + "sha256", "differs from the file table's; the bundle is malformed")


def check_manifest(root: Path, manifest: dict, manifest_path: Path) -> None:
    """Raise BundleError (one line) on the first field of `manifest` with a wrong type or an unsafe path."""
    from sdc.runtime.bundle import SCHEDULER_CONFIG, TOKENIZER_DIRS
    from sdc.runtime.precisions import ALL_TARGETS, PRECISIONS

    w = _Where(manifest_path)
    source = _obj(w, manifest, "source", "")
    family = _field(w, source, "family", "source.", str, "a string")
    if family not in RUNTIME_FAMILIES:
        raise w.fail("source.family", f"{family[:40]!r} is not a family this runtime generates "
                     f"({', '.join(RUNTIME_FAMILIES)}); update sdc or rebuild the bundle")
    _field(w, source, "pipeline_class", "source.", str, "a string")
    for key in ("sdc_version", "created_at"):
        _field(w, manifest, key, "", str, "a string")
    _field(w, manifest, "created_by", "", str, "a string", optional=True)
    pipe = _obj(w, manifest, "pipeline", "")
    for key in ("vae_scaling_factor",):
        _field(w, pipe, key, "pipeline.", _NUMBER, "a number")
    _field(w, pipe, "vae_shift_factor", "pipeline.", _NUMBER, "a number or null", optional=True)
    for key in ("vae_downscale", "latent_channels", "unet_in_channels", "unet_out_channels"):
        v = _field(w, pipe, key, "pipeline.", int, "a positive integer")
        if v <= 0:
            raise w.fail(f"pipeline.{key}", f"expected a positive integer, got {v}")
    for key in ("vae_latents_mean", "vae_latents_std"):
        stats = _field(w, pipe, key, "pipeline.", list, "a list of numbers or null", optional=True)
        if stats is not None:
            for i, v in enumerate(stats):
                _typed(w, f"pipeline.{key}[{i}]", v, _NUMBER, "a number")
            if len(stats) != pipe["latent_channels"]:
                raise w.fail(f"pipeline.{key}", f"{len(stats)} values for {pipe['latent_channels']} latent channels")
    for key in ("force_zeros_for_empty_prompt", "requires_aesthetics_score", "guidance_embeds"):
        _field(w, pipe, key, "pipeline.", bool, "true or false", optional=True)
    axes = _field(w, pipe, "rope_axes_dims", "pipeline.", list, "a list of even positive integers",
                  optional=family != "flux")
    for i, v in enumerate(axes or []):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % 2:
            raise w.fail(f"pipeline.rope_axes_dims[{i}]", f"expected an even positive integer, got {v!r}")
    for i, prof in enumerate(_field(w, manifest, "profiles", "", list, "a list of profiles", optional=True) or []):
        where = f"profiles[{i}]"
        _typed(w, where, prof, dict, "an object")
        _field(w, prof, "name", where + ".", str, "a string")
        for key in ("batch", "height", "width"):
            r = _field(w, prof, key, where + ".", list, "[min, opt, max]")
            if len(r) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in r):
                raise w.fail(f"{where}.{key}", f"expected three positive integers [min, opt, max], got {r!r}"[:160])
    defaults = _obj(w, manifest, "defaults", "")
    for key in ("height", "width", "steps"):
        v = _field(w, defaults, key, "defaults.", int, "a positive integer")
        if v <= 0:
            raise w.fail(f"defaults.{key}", f"expected a positive integer, got {v}")
    _field(w, defaults, "guidance_scale", "defaults.", _NUMBER, "a number")
    _field(w, defaults, "scheduler", "defaults.", str, "a scheduler name")
    default_precision = _field(w, defaults, "precision", "defaults.", str, "a precision name", optional=True)
    if default_precision is not None and default_precision not in PRECISIONS:
        raise w.fail("defaults.precision", f"unknown precision {default_precision!r}")

    files = _obj(w, manifest, "files", "")
    for rel, info in files.items():
        check_rel_path(w, f"files[{rel!r}]", rel)
        _typed(w, f"files[{rel!r}]", info, dict, "an object")
        sha = _field(w, info, "sha256", f"files[{rel!r}].", str, "a sha256 hex digest")
        if not _SHA256.fullmatch(sha):
            raise w.fail(f"files[{rel!r}].sha256", f"{sha[:70]!r} is not a sha256 hex digest")
        size = _field(w, info, "bytes", f"files[{rel!r}].", int, "a byte count")
        if size < 0:
            raise w.fail(f"files[{rel!r}].bytes", f"negative size {size}")
        inside(root, rel)

    def listed(field: str, rel) -> None:
        check_rel_path(w, field, rel)
        if rel not in files:
            raise w.fail(field, f"{rel!r} is not in the file table (unchecked files are never loaded)")

    submodels = _obj(w, manifest, "submodels", "")
    if not submodels:
        raise w.fail("submodels", "empty")
    for name, sub in submodels.items():
        p = f"submodels.{name}."
        _typed(w, p[:-1], sub, dict, "an object")
        check_rel_path(w, f"submodels[{name!r}]", name)  # names become folder names
        _spec_tensors(w, sub, "inputs", p)
        _spec_tensors(w, sub, "outputs", p)
        arts = _field(w, sub, "artifacts", p, list, "a list of artifacts")
        if not arts:
            raise w.fail(p + "artifacts", "empty")
        for i, a in enumerate(arts):
            ap = f"{p}artifacts[{i}]"
            _typed(w, ap, a, dict, "an object")
            target = _field(w, a, "target", ap + ".", str, "a target name")
            if target not in ALL_TARGETS:
                raise w.fail(ap + ".target", f"unknown target {target!r} (this sdc knows {', '.join(ALL_TARGETS)}; "
                                             f"a newer sdc may)")
            precision = _field(w, a, "precision", ap + ".", str, "a precision name")
            if precision not in PRECISIONS:
                raise w.fail(ap + ".precision", f"unknown precision {precision!r}")
            listed(ap + ".path", _field(w, a, "path", ap + ".", str, "a relative path"))
            if "data_paths" in a:
                for j, d in enumerate(_field(w, a, "data_paths", ap + ".", list, "a list of paths")):
                    listed(f"{ap}.data_paths[{j}]", d)
            for key in ("validation", "precision_record", "passes"):
                _field(w, a, key, ap + ".", dict, "an object", optional=True)
            v = a.get("validation") or {}
            for key in ("atol", "rtol", "max_abs", "max_rel"):
                _field(w, v, key, f"{ap}.validation.", _NUMBER, "a number", optional=True)
            _field(w, v, "where", f"{ap}.validation.", str, "a string", optional=True)
            _field(w, v, "judged_on", f"{ap}.validation.", str, "a string", optional=True)
            held = _field(w, v, "holdout", f"{ap}.validation.", dict, "an object", optional=True) or {}
            _field(w, held, "max_rel", f"{ap}.validation.holdout.", _NUMBER, "a number", optional=True)
            _check_record(w, a.get("precision_record") or {}, f"{ap}.precision_record.")
            for pass_name, counts in (a.get("passes") or {}).items():
                _typed(w, f"{ap}.passes[{pass_name!r}]", counts, dict, "an object of counts")
                for op, n in counts.items():
                    _typed(w, f"{ap}.passes[{pass_name!r}][{op!r}]", n, int, "a count")
        for i, e in enumerate(_field(w, sub, "engines", p, list, "a list of engines", optional=True) or []):
            ep = f"{p}engines[{i}]"
            _typed(w, ep, e, dict, "an object")
            listed(ep + ".path", _field(w, e, "path", ep + ".", str, "a relative path"))
            _check_engine(w, e, ep + ".", name, sub, files, PRECISIONS)
    for i, e in enumerate(_field(w, manifest, "engines", "", list, "a list of engines", optional=True) or []):
        _typed(w, f"engines[{i}]", e, dict, "an object")
        listed(f"engines[{i}].path", _field(w, e, "path", f"engines[{i}].", str, "a relative path"))
    # The tokenizer and scheduler are fixed by the layout, not named by the manifest: they, and anything
    # else in the folder, must not be symlinks out of it, and the runtime reads only checksummed files.
    check_links(root)
    for folder in [TOKENIZER_DIRS[n] for n in TOKENIZER_DIRS if n in submodels] + [SCHEDULER_CONFIG.split("/")[0]]:
        if (root / folder).is_dir():
            for f in sorted((root / folder).iterdir()):
                rel = f"{folder}/{f.name}"
                if f.is_file() and rel not in files:
                    raise w.fail("files", f"{rel!r} is read by the runtime but not in the file table")


def check_links(root: Path) -> None:
    """No file or folder of the bundle is a symlink that resolves outside it (not followed while walking)."""
    import os

    for folder, dirs, names in os.walk(root):
        for n in dirs + names:
            p = Path(folder) / n
            if p.is_symlink():
                inside(root, p.relative_to(root).as_posix())


def check_graph_references(root: Path, manifest: dict) -> None:
    """Every external-data location written inside each artifact's ONNX graph: inside the bundle, beside
    the graph's folder, and listed among the artifact's data paths (so its checksum covers it)."""
    from sdc.runtime.onnx_refs import OnnxParseError, external_data_locations

    for name, sub in manifest["submodels"].items():
        for a in sub["artifacts"]:
            graph = root / a["path"]
            if not graph.is_file():
                continue  # verify_files reports a missing listed file
            try:
                locations = external_data_locations(graph)
            except OnnxParseError as e:
                raise BundleError(f"{graph}: not a readable ONNX graph ({e}); the bundle is malformed, rebuild it")
            folder = PurePosixPath(a["path"]).parent
            allowed = set(a.get("data_paths") or [])
            for loc in dict.fromkeys(locations):  # each tensor of a weight file names it: check each file once
                rel = str(folder / loc) if "/" not in loc else None
                if (rel is None or "\\" in loc or loc in ("", ".", "..") or "\x00" in loc or PureWindowsPath(loc).drive
                        or rel not in allowed):
                    raise BundleError(f"{graph}: external data location {loc!r} is not one of the artifact's listed "
                                      f"data files ({', '.join(sorted(allowed)) or 'none'}); the bundle is malformed")
                inside(root, rel)
