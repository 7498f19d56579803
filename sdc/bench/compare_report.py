"""`sdc compare` results as text: the terminal table and the markdown section of PERFORMANCE.md."""

from __future__ import annotations

from sdc.bench.compare import CompareResult

HEADING = "## sdc compare"
COLUMNS = ("variant", "s / image", "UNet step s", "peak RSS GiB", "artifacts MiB", "speedup")


def columns(result: CompareResult) -> tuple[str, ...]:
    """COLUMNS, plus prompt adherence when the prompts are in the shape world (sdc.eval)."""
    return COLUMNS + (("adherence",) if any(v.adherence is not None for v in result.variants) else ())


def variant_rows(result: CompareResult) -> list[list[str]]:
    extra = len(columns(result)) - len(COLUMNS)
    base = next((v for v in result.variants if v.status == "ok" and v is result.variants[-1]), None)
    rows = []
    for v in result.variants:
        if v.status != "ok":
            rows.append([v.label] + ["—"] * (len(COLUMNS) - 2) + [f"{v.status}: {v.reason}"] + ["—"] * extra)
            continue
        speed = "baseline" if v is base else (f"{base.unet_step_seconds / v.unet_step_seconds:.2f}× (UNet), "
                                              f"{base.seconds_per_image / v.seconds_per_image:.2f}× (image)"
                                              if base else "—")
        rows.append([v.label, f"{v.seconds_per_image:.2f}", f"{v.unet_step_seconds:.3f}",
                     f"{v.peak_rss_bytes / 2**30:.2f}", f"{v.artifact_bytes / 2**20:.1f}", speed]
                    + ([f"{v.adherence:.1%}" if v.adherence is not None else "—"] if extra else []))
    return rows


def agreement_rows(result: CompareResult) -> list[list[str]]:
    return [[a.prompt[:48], str(a.seed), f"{a.psnr_db:.2f}", f"{a.ssim:.4f}", f"{a.latent_rel_error:.2e}"]
            for a in result.agreement]


def header(result: CompareResult) -> list[str]:
    o, m = result.options, result.machine
    s = result.summary()
    lines = [f"Bundle `{result.bundle}`: **{o.precision}** against **{o.against}**, {len(o.prompts)} prompt(s) x "
             f"{len(o.seeds)} seed(s), {o.steps} steps, guidance {o.guidance:g}; each variant in its own process, "
             f"median time over the images after a 2-step warm-up.",
             f"Machine: {m['cpu']}, {m['cores']} CPUs usable; load average "
             f"{'/'.join(f'{x:.2f}' for x in m['load_before'])} at start, "
             f"{'/'.join(f'{x:.2f}' for x in m['load_after'])} at end."]
    if s:
        lines.append(f"Agreement of {o.precision} with {o.against}: PSNR mean {s['psnr_db_mean']:.2f} dB "
                     f"(min {s['psnr_db_min']:.2f}), SSIM mean {s['ssim_mean']:.4f}, final-latent relative error "
                     f"max {s['latent_rel_error_max']:.2e}.")
    return lines


def compare_markdown(result: CompareResult) -> str:
    from sdc.bench.report import _md_table

    lines = [HEADING, "", "```bash", result.command or "(python API)", "```", ""]
    lines += [f"{x}\n" for x in header(result)]
    lines += _md_table(columns(result), variant_rows(result)) + [""]
    lines += _md_table(("prompt", "seed", "PSNR dB", "SSIM", "latent rel err"), agreement_rows(result))
    return "\n".join(lines).rstrip() + "\n"


def print_compare(console, result: CompareResult) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    for line in header(result):
        console.print(escape(line))
    t = Table(box=box.SIMPLE_HEAD)
    for c in columns(result):
        t.add_column(c, justify="left" if c == "variant" else "right")
    for row in variant_rows(result):
        t.add_row(*map(escape, row))
    console.print(t)
    a = Table(box=box.SIMPLE_HEAD)
    for c in ("prompt", "seed", "PSNR dB", "SSIM", "latent rel err"):
        a.add_column(c, justify="left" if c == "prompt" else "right")
    for row in agreement_rows(result):
        a.add_row(*map(escape, row))
    console.print(a)
