"""`sdc bench` results as text: one table shared by the terminal (rich) and the markdown section of PERFORMANCE.md."""

from __future__ import annotations

import re
from pathlib import Path

from sdc.bench.run import BenchResult, ComponentResult, VariantRun

HEADING = "## sdc bench"
COLUMNS = ("component", "variant", "median s", "min–max s", "load s", "RSS GiB", "speedup", "of floor",
           "max abs diff", "rel diff", "agrees")
TERMINAL_DROPS = ("load s", "rel diff")  # keeps the table within 120 columns


def _flops(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e12:.3f} TFLOP" if x >= 1e11 else f"{x / 1e9:.3f} GFLOP"


def _shape(shape: list[int]) -> str:
    return "×".join(map(str, shape))


def run_row(comp: ComponentResult, r: VariantRun) -> list[str]:
    if r.status != "ok":
        return [comp.name, r.variant] + ["—"] * (len(COLUMNS) - 3) + [f"{r.status}: {r.reason}"]
    base = r.variant == comp.baseline
    rel = r.max_abs_diff / comp.baseline_max_abs if comp.baseline_max_abs else 0.0
    return [
        comp.name, r.variant, f"{r.median:.3f}", f"{min(r.times):.3f}–{max(r.times):.3f}", f"{r.load_seconds:.1f}",
        f"{r.peak_rss_bytes / 2**30:.2f}",
        "baseline" if base else f"{r.speedup:.2f}×",
        "—" if r.floor_fraction is None else f"{100 * r.floor_fraction:.1f}%",
        "—" if base else f"{r.max_abs_diff:.2e}",
        "—" if base else f"{rel:.1e}",
        "—" if base else ("n/a (random inputs; see sdc compare)" if r.agrees is None else "yes" if r.agrees else "NO"),
    ]


def rows(result: BenchResult) -> list[list[str]]:
    return [run_row(c, r) for c in result.components for r in c.runs]


def flops_rows(result: BenchResult) -> list[list[str]]:
    """Per component: inputs, FLOPs (graph count, analytic cross-check), and the floor they imply."""
    out = []
    for c in result.components:
        by_op = ", ".join(f"{op} {_flops(v)}" for op, v in sorted(c.flops_by_op.items()))
        analytic = "—" if c.flops_analytic is None else (
            f"{_flops(c.flops_analytic)} (graph/analytic {c.flops / c.flops_analytic:.4f})" if c.flops else
            _flops(c.flops_analytic))
        out.append([c.name, ", ".join(f"{k} {_shape(v)}" for k, v in c.shapes.items()),
                    f"{_flops(c.flops)}" + (f" ({by_op})" if by_op else ""), analytic,
                    "—" if c.floor_seconds is None else f"{c.floor_seconds:.3f} s"])
    return out


def header_lines(result: BenchResult) -> list[str]:
    m, o = result.machine, result.options
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    lines = [
        f"Machine: {m.cpu}, {m.cores} CPUs usable, {m.memory_bytes / 2**30:.1f} GiB RAM; "
        f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in m.load_before)} at start, "
        f"{'/'.join(f'{x:.2f}' for x in m.load_after)} at end.",
        f"Software: Python {m.python}; {versions}.",
        f"CPU features (INT8 and fp16 speed depend on them): {m.features_text()}.",
        f"Each variant of each submodel ran in its own process with {o.threads or m.cores} threads on identical "
        f"inputs (numpy, seed {o.seed}): {o.warmup} warm-up call(s), then {o.runs} timed; median reported. "
        f"Speedup = t(baseline) / t; the baseline is the first variant that ran (torch when available). "
        f"Max abs diff = max |x - baseline| over the outputs both produce; rel diff = that / max |baseline|; "
        f"agrees when max abs diff <= atol + {o.rtol:g} · max |baseline| (atol from the submodel's spec).",
    ]
    if result.gemm:
        g = result.gemm
        lines.append(f"fp32 GEMM throughput ({g.size}×{g.size}×{g.size}, median of {g.repeats}, each library in its "
                     f"own process): numpy "
                     f"{g.numpy_flops_per_s / 1e9:.1f} GFLOP/s, ONNX Runtime {g.ort_flops_per_s / 1e9:.1f} GFLOP/s. "
                     f"Floor = graph FLOPs / the faster of the two; \"of floor\" = floor / median.")
    return lines


def _md_table(columns, body) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
           ["| " + " | ".join(esc(x) for x in row) + " |" for row in body]


def markdown_section(result: BenchResult) -> str:
    lines = [HEADING, "", "```bash", result.command or "(python API)", "```", "",
             "Variants: **torch** = diffusers on PyTorch, eager fp32 (`torch.inference_mode`); **paddle** = sdc's "
             "Paddle modules in dygraph (`paddle.no_grad`); **sdc** = the bundle built without passes, in ONNX Runtime "
             "(CPU provider; ORT's own graph optimisations still run); **sdc-passes** = the bundle built with passes "
             "and the `ort-cpu` target, running the artifact the runtime picks for the CPU provider; **sdc-int8** / **sdc-int8-dynamic** / "
             "**sdc-w8** = the bundle built with `--precision int8` / `int8-dynamic` / `w8` (int8 calibrated on sdc's "
             "default prompts), its ort-cpu artifact of that precision. UNet = one "
             "classifier-free-guidance step (batch 2), text encoder = 2 prompts, VAE = one image.", ""]
    lines += [f"{x}\n" for x in header_lines(result)]
    lines += _md_table(("component", "inputs", "FLOPs (ONNX graph)", "FLOPs (analytic)", "floor"), flops_rows(result))
    lines.append("")
    lines += _md_table(COLUMNS, rows(result))
    lines.append("")
    lines += [f"- {n}" for n in artifact_notes(result) + result.notes]
    return "\n".join(lines).rstrip() + "\n"


def artifact_notes(result: BenchResult) -> list[str]:
    """Which graph each sdc variant actually ran, so a reader can tell the two bundles apart."""
    out = []
    for c in result.components:
        for r in c.runs:
            if r.status == "ok" and r.detail:
                d = r.detail
                out.append(f"{c.name} {r.variant}: ran {d['artifact']} `{d['path']}` (sha256 {d['sha256'][:12]}…), "
                           f"rewrites: {d['rewrites']}")
    return out


def write_markdown(path: Path, section: str, heading: str = HEADING) -> None:
    """Put the section into `path`: replace an existing section under `heading`, keep every other section."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")


def print_result(console, result: BenchResult) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    for line in header_lines(result):
        console.print(escape(line))
    flops = Table(title="work per call", box=box.SIMPLE_HEAD)
    for col in ("component", "inputs", "FLOPs (ONNX graph)", "FLOPs (analytic)", "floor"):
        flops.add_column(col)
    for row in flops_rows(result):
        flops.add_row(*map(escape, row))
    console.print(flops)
    table = Table(title=f"sdc bench {result.model_dir}", box=box.SIMPLE_HEAD)
    keep = [i for i, col in enumerate(COLUMNS) if col not in TERMINAL_DROPS]  # the markdown has them all
    for i in keep:
        left = COLUMNS[i] in ("component", "variant", "agrees")
        table.add_column(COLUMNS[i], justify="left" if left else "right", no_wrap=COLUMNS[i] != "agrees")
    for row in rows(result):
        row = [row[i] for i in keep]
        table.add_row(*[f"[red]{escape(x)}[/]" if x.startswith(("failed", "NO")) else escape(x) for x in row])
    console.print(table)
    for note in artifact_notes(result) + result.notes:
        console.print(f"  {escape(note)}")
