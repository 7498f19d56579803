"""The bundle format: layout, FORMAT_VERSION, manifest reading, migrations and checksum verification.

This module is the one owner of the on-disk layout; the build's writer (sdc/compile/bundle.py) and
the runtime's reader both go through it. It imports no Paddle.

When to bump FORMAT_VERSION: whenever a reader of the previous version would misread a bundle of
the new one — a field renamed, removed or whose meaning changed, a file moved. Adding an optional
field that old readers can ignore does not bump it. Each bump adds a migration in `_MIGRATIONS`
that rewrites a manifest of the previous version into the new shape, so old bundles keep loading;
a reader refuses manifests newer than it knows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

from sdc.errors import BundleError, ChecksumError, SdcError

FORMAT = "sdc-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "SUMMARY.txt"  # human-readable, beside the manifest; listed in files like everything else

# Layout, relative to the bundle root (POSIX paths).
TOKENIZER_DIRS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def model_path(submodel: str, target: str = "portable", precision: str = "fp32") -> str:
    """Where an ONNX artifact lives: the portable fp32 graph is `<submodel>/model.onnx`."""
    if target == "portable" and precision == "fp32":
        return f"{submodel}/model.onnx"
    return f"{submodel}/model.{target}.{precision}.onnx"


def validation_path(submodel: str) -> str:
    """Validation inputs and Paddle reference outputs, re-run by `sdc verify --numerics`."""
    return f"{submodel}/validation.safetensors"


ENGINES_DIR = "engines"


def engine_path(key: str, submodel: str, precision: str) -> str:
    """Where a TensorRT plan lives: one folder per content key (sdc.engines.engine_key)."""
    return f"{ENGINES_DIR}/{key}/{submodel}.{precision}.plan"


def timing_cache_path(gpu_key: str) -> str:
    """TensorRT's kernel timing cache of one GPU kind and TensorRT version, reused by every build there."""
    return f"{ENGINES_DIR}/timing-{gpu_key}.cache"


# Migrations: _MIGRATIONS[v] turns a version-v manifest into version v+1.
_MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_join(root: Path, rel: str) -> Path:
    """Resolve a manifest path inside the bundle; refuse absolute, unnormalised, `..` and symlink escapes."""
    from sdc.runtime.manifest_check import _Where, check_rel_path, inside

    root = Path(root)
    check_rel_path(_Where(root / MANIFEST), "path", rel)
    return inside(root, rel)


@contextlib.contextmanager
def bundle_data(path: Path, what: str) -> Iterator[None]:
    """Files of a bundle are data from whoever made it: any failure to read one is a BundleError."""
    try:
        yield
    except SdcError:
        raise
    except Exception as e:  # json, tokenizers, safetensors and scheduler code raise their own types on garbage
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise BundleError(f"{path}: cannot read the {what} ({first}); the bundle is damaged, rebuild it")


def read_manifest(root: Path) -> dict:
    """Load and check a manifest: format name, version (migrating older ones), and every path."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: bundle not found; build one with `sdc build MODEL_DIR -o {root}`")
    if not path.is_file():
        raise BundleError(f"{path}: missing; {root} is not an sdc bundle (or its build did not finish)")
    if path.is_symlink():
        from sdc.runtime.manifest_check import inside

        inside(root, MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(f"{path}: not valid JSON ({str(e)[:120]}); rebuild the bundle")
    except RecursionError:
        raise BundleError(f"{path}: nested too deeply to be a manifest; the bundle is malformed")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is not {FORMAT!r}; this is not an sdc bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: format_version {version!r} is invalid; rebuild the bundle")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version} is newer than this sdc understands ({FORMAT_VERSION}); "
            f"upgrade sdc (pip install -U sdc) to load it"
        )
    while version < FORMAT_VERSION:
        manifest = _MIGRATIONS[version](manifest)
        version += 1
        manifest["format_version"] = version
    from sdc.runtime.manifest_check import check_graph_references, check_manifest

    check_manifest(root, manifest, path)
    check_graph_references(root, manifest)
    return manifest


def file_table(root: Path, with_hash: bool = True) -> dict[str, dict]:
    """sha256 and size of every file under root except the manifest, sorted by path."""
    root = Path(root)
    table = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            table[rel] = {"sha256": sha256_file(p) if with_hash else "", "bytes": p.stat().st_size}
    return table


def verify_files(root: Path, manifest: dict, full: bool = True) -> list[str]:
    """Check every listed file (sha256 when `full`, else sizes); raise ChecksumError on the first problem.

    Returns files present in the bundle but not listed in the manifest (reported by `sdc verify`).
    """
    root = Path(root)
    files = manifest.get("files", {})
    for rel, info in files.items():
        p = safe_join(root, rel)
        if not p.is_file():
            raise ChecksumError(f"{p}: listed in the manifest but missing; the bundle is incomplete, rebuild it")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise ChecksumError(f"{p}: size {size} differs from the manifest ({info['bytes']}); the file was modified, rebuild the bundle")
        if full and sha256_file(p) != info["sha256"]:
            raise ChecksumError(f"{p}: sha256 differs from the manifest; the file was modified, rebuild the bundle")
    listed = set(files)
    return [
        p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and p.relative_to(root).as_posix() not in listed
    ]
