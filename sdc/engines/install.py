"""Add TensorRT engines to a built bundle, in place and atomically (`sdc engines build`, `sdc build --target tensorrt`).

Order of work, so that a bundle is never half-updated whatever stops the process:
1. under the bundle's output lock (the one `sdc build` takes), remove what killed runs left: staging
   folders beside the bundle (`.OUT.tmp-PID-engines`) and engine folders the manifest does not list;
2. verify every file's sha256 (the key hashes them: a plan must come from the bytes the manifest states);
3. build each plan into the staging folder, beside the bundle (the bundle is untouched until step 4);
4. commit: the new manifest is written next to the old, the staged key folders are renamed into
   `engines/`, and the manifest is replaced in one rename. A kill before that rename leaves the old
   manifest in force; the renamed-in folders it does not list are removed by step 1 of the next run.

The plan writer is a parameter: `sdc.engines.tensorrt.build_plan` on a GPU host. The CPU tests pass a
writer of their own bytes to test this bookkeeping (entries, checksums, atomicity), and say so: TensorRT
itself is never imitated there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sdc.engines import BuilderSettings, Environment, engine_key
from sdc.errors import InputError
from sdc.runtime.bundle import (
    ENGINES_DIR, MANIFEST, engine_path, file_table, read_manifest, timing_cache_path, verify_files,
)

PlanWriter = Callable[..., bytes]  # (onnx_path, shapes, settings, timing_cache, log) -> plan bytes


@dataclass(frozen=True)
class PlannedEngine:
    submodel: str
    precision: str
    artifact: dict
    key: str
    path: str
    shapes: dict  # input -> (min, opt, max) shapes

    def entry(self, profile: dict, settings: BuilderSettings, env: Environment, sha256: str, size: int) -> dict:
        return {"submodel": self.submodel, "key": self.key, "path": self.path, "precision": self.precision, "artifact": self.artifact["path"],
                "profile": profile["name"], "dims": profile["dims"][self.submodel], "settings": asdict(settings),
                "environment": asdict(env), "sha256": sha256, "bytes": size}


def gpu_key(env: Environment) -> str:
    """One token per GPU kind and TensorRT version (names the timing cache)."""
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "-", f"sm{env.compute_capability}-{env.gpu_name}-trt{env.tensorrt}").strip("-")


def plan_engines(manifest: dict, profile: dict, precision: str | None, settings: BuilderSettings,
                 env: Environment, only: list[str] | None = None) -> list[PlannedEngine]:
    """Which engine each submodel gets: the tensorrt-target artifact of `precision` (the bundle's default
    precision when None), else the portable one, with its content key and input shape ranges."""
    from sdc.engines.tensorrt import input_shapes
    from sdc.runtime.loader import choose_artifact

    precision = precision or (manifest.get("defaults") or {}).get("precision", "fp32")
    names = only or list(manifest["submodels"])
    unknown = [n for n in names if n not in manifest["submodels"]]
    if unknown:
        raise InputError(f"--only {','.join(unknown)}: not in the bundle (it has {', '.join(manifest['submodels'])})")
    planned = []
    for name in names:
        sub = manifest["submodels"][name]
        art = choose_artifact(sub, name, "tensorrt", precision)
        if name not in profile["dims"]:
            raise InputError(f"profile {profile['name']} gives no dims for {name}; rebuild the bundle with --profile")
        key = engine_key(art, manifest["files"], dict(profile["dims"][name], name=profile["name"]), settings, env)
        planned.append(PlannedEngine(name, precision, art, key, engine_path(key, name, precision),
                                     input_shapes(sub["inputs"], profile["dims"][name])))
    return planned


def remove_unlisted_engines(root: Path, manifest: dict) -> int:
    """Engine folders the manifest does not list (left by a run killed between its renames)."""
    listed = {p for p in manifest["files"] if p.startswith(ENGINES_DIR + "/")}
    listed_dirs = {p.split("/")[1] for p in listed}
    removed = 0
    folder = root / ENGINES_DIR
    if folder.is_dir():
        for child in folder.iterdir():
            rel = f"{ENGINES_DIR}/{child.name}"
            if child.is_dir() and not child.is_symlink() and child.name not in listed_dirs:
                shutil.rmtree(child)
                removed += 1
            elif child.is_file() and rel not in listed:
                child.unlink()
                removed += 1
    return removed


def add_engines(root: Path, profile: dict, settings: BuilderSettings, env: Environment, write_plan: PlanWriter,
                precision: str | None = None, only: list[str] | None = None,
                progress: Callable[[str], None] = print) -> list[dict]:
    """Build the bundle's engines for this machine and list them in its manifest; returns the new entries.

    Engines of other GPUs / TensorRT versions stay listed (a bundle carries one plan per GPU kind); an
    entry of the same submodel, precision, profile and machine is replaced. A plan whose key is already
    listed is not rebuilt.
    """
    from sdc.compile.output import OutputLock, environment_error, remove_stale_temporaries
    from sdc.engines.tensorrt import BuildLog

    root = Path(root)
    with OutputLock(root):
        remove_stale_temporaries(root)
        manifest = read_manifest(root)
        if remove_unlisted_engines(root, manifest):
            progress("removed engine folders an interrupted run left unlisted")
        verify_files(root, manifest, full=True)
        planned = plan_engines(manifest, profile, precision, settings, env, only)
        have = {e["key"] for s in manifest["submodels"].values() for e in s.get("engines", [])}
        todo = [p for p in planned if p.key not in have]
        for p in planned:
            if p.key in have:
                progress(f"  {p.submodel}: engine {p.key} is up to date")
        if not todo:
            return []
        stage = root.with_name(f".{root.name}.tmp-{os.getpid()}-engines")
        shutil.rmtree(stage, ignore_errors=True)
        try:
            cache_rel = timing_cache_path(gpu_key(env))
            cache = stage / cache_rel
            cache.parent.mkdir(parents=True)
            if (root / cache_rel).is_file():
                shutil.copyfile(root / cache_rel, cache)
            for p in todo:
                log = BuildLog()
                progress(f"  {p.submodel}: building {p.precision} engine from {p.artifact['path']} ...")
                plan = write_plan(root / p.artifact["path"], p.shapes, settings, cache, log)
                target = stage / p.path  # the staging folder is the temporary: no file-level atomicity needed
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(plan)
                target.with_suffix(".log").write_text("\n".join(log.lines) + "\n", encoding="utf-8")
                progress(f"  {p.submodel}: {len(plan) / 2**20:.1f} MiB plan ({p.key})")
            staged = file_table(stage)  # every plan, log and the timing cache, each hashed once
            entries = [p.entry(profile, settings, env, staged[p.path]["sha256"], staged[p.path]["bytes"]) for p in todo]
            _commit(root, stage, manifest, entries, staged)
        except OSError as e:
            err = environment_error(e, root)
            if err is not None:
                raise err from None
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return entries


def _replaces(old: dict, new: dict) -> bool:
    same = ("precision", "profile", "environment")
    return old["key"] == new["key"] or all(old.get(k) == new.get(k) for k in same)


def _commit(root: Path, stage: Path, manifest: dict, entries: list[dict], staged: dict) -> None:
    """Swap the staged engines (`staged`: their file table) and the new manifest in: the manifest's rename is
    the commit point."""
    dropped: set[str] = set()  # key folders of replaced entries: every file in them leaves the file table
    for entry in entries:
        sub = manifest["submodels"][entry["submodel"]]
        kept = []
        for old in sub.get("engines", []):
            if _replaces(old, entry):
                dropped.add(old["path"].rsplit("/", 1)[0] + "/")
            else:
                kept.append(old)
        sub["engines"] = kept + [entry]
    files = {rel: info for rel, info in manifest["files"].items() if not rel.startswith(tuple(dropped))}
    manifest["files"] = dict(sorted({**files, **staged}.items()))
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    try:
        (root / ENGINES_DIR).mkdir(exist_ok=True)
        staged = stage / ENGINES_DIR
        for child in sorted(staged.iterdir()):
            dst = root / ENGINES_DIR / child.name
            if child.is_dir():
                if dst.exists():  # a key folder the old manifest listed but a re-run rebuilds in full
                    shutil.rmtree(dst)
                os.replace(child, dst)
            else:
                os.replace(child, dst)  # the timing cache
        os.replace(tmp, root / MANIFEST)
    finally:
        if tmp.exists():
            tmp.unlink()
    remove_unlisted_engines(root, manifest)  # plans of replaced entries
