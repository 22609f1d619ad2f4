"""Benchmark results for people and programs: a rich table, ``results.json``, ``results.csv``,
``results.md`` (the table in Markdown) and plots.

``results.json`` is ``{"header": {...}, "rows": [...]}`` (fields of :class:`~attnlab.bench.results.BenchHeader`
and :class:`~attnlab.bench.results.BenchRow`); ``results.csv`` has the same rows, one per line.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rich import box
from rich.table import Table

from ..outputs import check_output_dir
from .results import BenchResult, BenchRow
from .variant import AttentionVariant

__all__ = [
    "RESULT_FILES",
    "WrittenFiles",
    "check_results_dir",
    "format_bytes",
    "results_markdown",
    "results_notes",
    "results_table",
    "write_csv",
    "write_json",
    "write_results",
]

#: What :func:`write_results` may write into its directory.
RESULT_FILES: tuple[str, ...] = ("results.json", "results.csv", "results.md", "bench.png", "sweep.png")

_STATUS_STYLE = {"ok": "green", "failed": "bold red", "oom": "red", "error": "red"}


def format_bytes(num_bytes: float | None) -> str:
    """``1536 -> '1.5 KiB'``; ``None -> '—'``."""
    if num_bytes is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num_bytes) < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ms(value: float | None) -> str:
    """Milliseconds with three significant digits, without exponents: 0.116, 2.91, 696, 1,710."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _share_of_peak(row: BenchRow) -> str:
    """``'42.0%'``; ``'n/a'`` for a timed row faster than the measured peak (see the header's warning)."""
    if row.peak_fraction is not None:
        return f"{100 * row.peak_fraction:.1f}%"
    return "n/a" if row.gflops is not None else "—"


def _columns(result: BenchResult) -> list[str]:
    columns = ["implementation", "mode"]
    if result.sweep_key is not None:
        columns.append(result.sweep_key)
    columns += ["median ms", "IQR ms", "GFLOP/s", "% peak", "peak mem", "max err", "status", "speed-up"]
    if result.header.config.get("compile"):
        columns.append("compile s")
    return columns


def _cells(row: BenchRow, result: BenchResult) -> list[str]:
    """Plain-text cells in the order of :func:`_columns`."""
    cells = [row.label, row.mode]
    if result.sweep_key is not None:
        cells.append(str(getattr(row, result.sweep_key)))
    cells += [
        _ms(row.median_ms),
        _ms(row.iqr_ms),
        _fmt(row.gflops, ".1f"),
        _share_of_peak(row),
        format_bytes(row.peak_mem_bytes),
        _fmt(row.max_abs_err, ".1e"),
        row.status,
        _fmt(row.speedup, ".2f", "x"),
    ]
    if result.header.config.get("compile"):
        cells.append(_fmt(row.compile_s, ".1f"))
    return cells


def _title(result: BenchResult) -> str:
    header, config = result.header, result.header.config
    sizes = ", ".join(
        f"{name} {config[name]}" for name in ("batch", "seq_len", "d_model", "num_heads") if name != result.sweep_key
    )
    variant = AttentionVariant(**config["variant"]) if config.get("variant") else AttentionVariant()
    attention = "" if variant.is_plain else f", {variant.describe()}"
    return f"attnlab bench: {header.device_name}, {header.dtype}, {sizes}{attention}, {header.num_threads} threads"


def results_table(result: BenchResult) -> Table:
    """One line per row: time, spread, FLOP rate, share of peak, memory, error, status, speed-up."""
    header = result.header
    load = "" if header.load_average is None else f"; system load {header.load_average[0]:.1f} (1 min)"
    table = Table(
        box=box.SIMPLE_HEAD,
        title=_title(result),
        caption=(
            f"peak {header.peak_gflops:.1f} GFLOP/s ({header.peak_method}); spread = interquartile range; "
            f"memory: {header.memory_method}; speed-up vs the slowest ok row of the same mode and size{load}"
            + (f"; {header.peak_warning}" if header.peak_warning else "")
        ),
    )
    for name in _columns(result):
        table.add_column(name, justify="left" if name in ("implementation", "mode", "status") else "right")
    status_index = _columns(result).index("status")
    for row in result.rows:
        cells = _cells(row, result)
        cells[status_index] = f"[{_STATUS_STYLE.get(row.status, 'yellow')}]{row.status}[/]"
        table.add_row(*cells)
    return table


def results_markdown(result: BenchResult) -> str:
    """The table as Markdown (for docs and issues), with the peak and the memory method below it."""
    columns = _columns(result)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("implementation", "mode", "status") else "--:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row, result)) + " |" for row in result.rows]
    header = result.header
    lines += [
        "",
        f"{_title(result)}; torch {header.torch_version}; peak {header.peak_gflops:.1f} GFLOP/s "
        f"({header.peak_method}); memory: {header.memory_method}.",
    ]
    if header.peak_warning:
        lines.append(f"{header.peak_warning[0].upper()}{header.peak_warning[1:]}.")
    return "\n".join(lines) + "\n"


def results_notes(result: BenchResult) -> list[str]:
    """One line per row with a note (why it was skipped or failed), e.g. ``flex backward: unsupported: ...``."""
    key = result.sweep_key
    return [
        f"{row.label} {row.mode}{'' if key is None else f' ({key} {getattr(row, key)})'}: {row.status}: {row.note}"
        for row in result.rows
        if row.note
    ]


def write_json(result: BenchResult, path: Path) -> Path:
    """``{"header": ..., "rows": [...]}``, indented."""
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def write_csv(result: BenchResult, path: Path) -> Path:
    """Every row, every field of :class:`BenchRow` as a column; empty cells for missing values."""
    names = [f.name for f in fields(BenchRow)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in result.rows:
            writer.writerow(asdict(row))
    return path


@dataclass
class WrittenFiles:
    """Files written, and the outputs skipped with the reason (e.g. plots without matplotlib)."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def check_results_dir(out_dir: Path | str) -> Path:
    """Raise ``ValueError`` unless :func:`write_results` can write into ``out_dir`` (call it before a run)."""
    return check_output_dir(out_dir, RESULT_FILES)


def write_results(result: BenchResult, out_dir: Path | str) -> WrittenFiles:
    """Write ``results.json``, ``results.csv``, ``results.md``, ``bench.png`` and, for a sweep, ``sweep.png``."""
    out_dir = check_results_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = WrittenFiles([write_json(result, out_dir / "results.json"), write_csv(result, out_dir / "results.csv")])
    (out_dir / "results.md").write_text(results_markdown(result))
    written.paths.append(out_dir / "results.md")
    if importlib.util.find_spec("matplotlib") is None:
        written.skipped.append("plots: matplotlib is not installed (pip install 'attnlab[plots]')")
        return written
    from .plots import plot_bars, plot_sweep

    written.paths.append(plot_bars(result, out_dir / "bench.png"))
    if result.sweep_key is not None:
        written.paths.append(plot_sweep(result, out_dir / "sweep.png"))
    return written
