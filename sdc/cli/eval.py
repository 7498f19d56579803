"""`sdc eval`: prompt adherence of a bundle on the shape world (per attribute, overall, time per image, contact sheet)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, ProviderOpt, app, finish, stderr_console


@app.command("eval")
def eval_(
    bundle: BundleArg,
    precision: Annotated[Optional[str], typer.Option("--precision", help="Artifact precision to run (fp32, fp16, bf16, int8, int8-dynamic, w8); default: the runtime's choice. On the CPU, fp16/bf16 (GPU targets: add --target tensorrt) run emulated per op, each result rounded as on a GPU.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Artifact to run: portable, ort-cpu, ...; default: the one tuned for the provider.")] = None,
    prompts: Annotated[str, typer.Option("--prompts", help="A UTF-8 file, one prompt a line, or a shipped set: heldout, train, ci.")] = "heldout",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per prompt (0 .. N-1).")] = 4,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Inference steps (default: what the shipped model wants).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (default: what the shipped model wants).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Scheduler name (default: the bundle's).")] = None,
    sheet: Annotated[Path, typer.Option("--sheet", help="Contact sheet PNG to write.")] = Path("eval-sheet.png"),
    no_sheet: Annotated[bool, typer.Option("--no-sheet", help="Do not write a contact sheet.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full result (every image's checks) as JSON.")] = None,
    min_overall: Annotated[Optional[float], typer.Option("--min-overall", help="Exit 1 when overall accuracy is below this fraction.")] = None,
    provider: ProviderOpt = "cpu",
) -> None:
    """Generate every prompt with every seed, read each image back, and report how often it shows what was asked.

    Prompts must be in the shape world's grammar ('a red circle on a blue background'; see sdc/eval/world.py).
    The default set, heldout, asks only for colour/shape/background combinations the shipped model never saw in training.
    """
    import json

    from rich.progress import Progress

    from sdc.errors import InputError
    from sdc.eval.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, evaluate, parse_all, write_sheet
    from sdc.eval.promptsets import read_prompts

    t0 = time.perf_counter()
    if seeds < 1:
        raise InputError(f"--seeds {seeds}: need at least 1")
    if min_overall is not None and not 0.0 <= min_overall <= 1.0:
        raise InputError(f"--min-overall {min_overall}: a fraction in [0, 1]")
    texts = read_prompts(prompts)
    parse_all(texts, source=prompts)  # a prompt outside the world fails before the bundle loads
    steps = DEFAULT_STEPS if steps is None else steps
    guidance = DEFAULT_GUIDANCE if guidance is None else guidance
    with Progress(transient=True, console=stderr_console()) as bar:
        task = bar.add_task("generating", total=len(texts) * seeds)
        result = evaluate(bundle, texts, seeds, steps=steps, guidance=guidance, provider=provider,
                          precision=precision, target=target, scheduler=scheduler,
                          progress=lambda i, n: bar.update(task, completed=i))
    _print_table(result)
    wrote = []
    if not no_sheet:
        wrote.append(f"sheet {write_sheet(result, sheet)}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        wrote.append(f"json {json_out}")
    ok = min_overall is None or result.overall >= min_overall
    typer.echo(f"scored {len(result.results)} images ({len(texts)} prompts x {seeds} seeds, {steps} steps, guidance "
               f"{guidance:g}) from {bundle}: {result.overall:.1%} right on every attribute, "
               f"{result.seconds_per_image:.2f} s/image" + (f"; wrote {', '.join(wrote)}" if wrote else ""))
    finish(ok, t0)
    if not ok:
        raise typer.Exit(1)


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    ran = sorted(set(result.artifacts.values()))
    table = Table(title=f"prompt adherence ({', '.join(ran) or 'no artifacts'})")
    for col in ("attribute", "accuracy", "images"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for attribute, (acc, n) in result.per_attribute().items():
        table.add_row(attribute, f"{acc:.1%}", str(n))
    table.add_row("[bold]overall[/]", f"[bold]{result.overall:.1%}[/]", str(len(result.results)))
    Console(highlight=False).print(table)
    typer.echo(f"time per image: {result.seconds_per_image:.3f} s")
    failed = [r for r in result.results if not r.passed]
    for r in failed[:10]:  # plain lines: a log keeps each miss on one line
        typer.echo(f"  miss: {r.prompt!r} seed {r.seed}: {r.misses()}")
    if len(failed) > 10:
        typer.echo(f"  ... and {len(failed) - 10} more misses (--json has them all)")
