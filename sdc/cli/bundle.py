"""`sdc inspect` and `sdc verify`: what a bundle holds, and whether its bytes and numerics still hold."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from sdc.cli.app import BundleArg, ProviderOpt, stderr_console, finish, app
from sdc.cli.build import artifact_sizes, fusions_text, precision_text


@app.command()
def inspect(
    bundle: BundleArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show what a bundle holds: submodels, I/O contracts, artifacts, sizes, validation errors."""
    import json

    from sdc.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    src = manifest["source"]
    console.print(f"[bold]{bundle}[/]  {src['pipeline_class']} ({src['family']}), format v{manifest['format_version']}, "
                  f"sdc {manifest['sdc_version']}, created {manifest['created_at']}")
    d = manifest["defaults"]
    console.print(f"defaults: {d['scheduler']}, {d['width']}x{d['height']}, {d['steps']} steps, guidance {d['guidance_scale']}, "
                  f"precision {d.get('precision', 'fp32')}")
    from sdc.runtime.loader import bundle_precisions

    console.print(f"precisions: {', '.join(bundle_precisions(manifest))}")
    for prof in manifest.get("profiles", []):  # type-checked by read_manifest
        ranges = ", ".join(f"{k} {':'.join(map(str, prof[k]))}" for k in ("batch", "height", "width", "text") if k in prof)
        console.print(f"profile {prof['name']}: {ranges} (validated at its min and max corners)")
    from sdc.cli.engines import engines_text

    for line in engines_text(manifest):
        console.print(line, markup=False)
    io = Table(title="contracts")
    for col in ("submodel", "inputs", "outputs"):
        io.add_column(col)
    arts = Table(title="artifacts")
    for col in ("submodel", "artifact", "file", "size", "fusions", "precision", "max abs err", "held-out rel"):
        arts.add_column(col, justify="right" if col in ("size", "max abs err", "held-out rel") else "left")
    files = manifest["files"]
    for name, sub in manifest["submodels"].items():
        fmt = lambda ts: "\n".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in ts)  # noqa: E731
        io.add_row(name, fmt(sub["inputs"]), fmt(sub["outputs"]))
        for a, size in zip(sub["artifacts"], artifact_sizes(sub, files)):
            v = a.get("validation") or {}
            held = (v.get("holdout") or {}).get("max_rel")
            arts.add_row(name, f"{a['target']}/{a['precision']}", a["path"], f"{size / 2**20:.1f} MiB",
                         fusions_text(a.get("passes") or {}), precision_text(a), f"{v.get('max_abs', float('nan')):.2e}",
                         "-" if held is None else f"{held:.2e}")
    console.print(io)
    console.print(arts)
    total = sum(f["bytes"] for f in manifest["files"].values())
    console.print(f"{len(manifest['files'])} files, {total / 2**20:.1f} MiB")


@app.command()
def verify(
    bundle: BundleArg,
    numerics: Annotated[bool, typer.Option("--numerics", help="Also re-run the validation inputs in ONNX Runtime.")] = False,
    provider: ProviderOpt = "cpu",
) -> None:
    """Check every file's sha256 against the manifest (and, with --numerics, the recorded outputs)."""
    from sdc.runtime.bundle import read_manifest, verify_files
    from sdc.runtime.verify import verify_numerics

    t0 = time.perf_counter()
    console = stderr_console()
    manifest = read_manifest(bundle)
    extra = verify_files(bundle, manifest, full=True)
    console.print(f"  [green]✓[/] {len(manifest['files'])} files match their sha256")
    ok = True
    if extra:
        ok = False
        console.print(f"  [red]✗[/] files not in the manifest: {', '.join(extra)}")
    ran = skipped = 0
    if numerics:
        for line, passed in verify_numerics(bundle, manifest, provider):
            if passed is None:  # not run here (a missing provider, streamed weights): said, not counted as passed
                console.print(f"  [yellow]-[/] {line}")
                skipped += 1
                continue
            ran += 1
            ok &= passed
            console.print(f"  {'[green]✓[/]' if passed else '[red]✗[/]'} {line}")
    what = f"{len(manifest['files'])} files" + (f", numerics re-run on {ran} artifact(s)" if numerics else "") + \
        (f" ({skipped} not run here)" if skipped else "")
    finish(ok, t0, f"verified {bundle}: {what}" if ok else f"{bundle} failed verification ({what}): see the ✗ lines")
    if not ok:
        raise typer.Exit(1)
