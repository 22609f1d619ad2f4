"""Benchmark plots: ``bench.png`` (median time per implementation, one panel per mode, interquartile
bars) and ``sweep.png`` (time and peak memory against the swept size, log scales).

Uses matplotlib's object API (``Figure``), not pyplot: no global state, no display needed.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .results import BenchResult, BenchRow

__all__ = ["plot_bars", "plot_sweep"]

_LINESTYLES = {"forward": "-", "backward": "--"}


def _labels(rows: list[BenchRow]) -> list[str]:
    return list(dict.fromkeys(row.label for row in rows))  # run order, no repeats


def plot_bars(result: BenchResult, path: Path) -> Path:
    """Horizontal bars of median ms per implementation, one panel per mode; whiskers span p25..p75.

    With a sweep, each implementation gets one bar per swept value. Rows that were not timed are
    named in place of their bar (e.g. ``unsupported``).
    """
    modes = list(dict.fromkeys(row.mode for row in result.rows))
    labels = _labels(result.rows)
    key = result.sweep_key
    values = list(dict.fromkeys(getattr(row, key) for row in result.rows)) if key else [None]
    height = 0.8 / len(values)
    figure = Figure(figsize=(6 * len(modes), 0.45 * len(labels) * max(1, len(values) / 2) + 1.5), layout="constrained")
    axes = figure.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes, strict=True):
        for v_index, value in enumerate(values):
            for l_index, label in enumerate(labels):
                row = next(
                    (
                        r
                        for r in result.rows
                        if r.mode == mode and r.label == label and (key is None or getattr(r, key) == value)
                    ),
                    None,
                )
                y = l_index + (v_index - (len(values) - 1) / 2) * height
                if row is None:
                    continue
                if row.status != "ok" or row.median_ms is None:
                    ax.text(0, y, f" {row.status}", va="center", fontsize=8, color="grey")
                    continue
                err = [[row.median_ms - row.p25_ms], [row.p75_ms - row.median_ms]]
                ax.barh(
                    y,
                    row.median_ms,
                    height=height * 0.9,
                    xerr=err,
                    color=f"C{v_index}",
                    capsize=2,
                    label=f"{key} = {value}" if key and l_index == 0 else None,
                )
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()  # first implementation on top, as in the table
        ax.set_xlabel("median time per call (ms)")
        ax.set_title(f"{mode} ({result.header.dtype}, {result.header.device})")
        if key is not None:
            ax.legend(fontsize=8)
    figure.suptitle(result.header.device_name)
    figure.savefig(path, dpi=120)
    return path


def plot_sweep(result: BenchResult, path: Path) -> Path:
    """Median time and peak memory against the swept size: one line per implementation and mode."""
    key = result.sweep_key
    if key is None:
        raise ValueError("plot_sweep needs a result from a sweep (config.sweep is None)")
    figure = Figure(figsize=(12, 5), layout="constrained")
    time_ax, mem_ax = figure.subplots(1, 2)
    for mode in dict.fromkeys(row.mode for row in result.rows):
        for index, label in enumerate(_labels(result.rows)):
            rows = [r for r in result.rows if r.mode == mode and r.label == label and r.status == "ok"]
            if not rows:
                continue
            xs = [getattr(r, key) for r in rows]
            style = {"linestyle": _LINESTYLES.get(mode, ":"), "marker": "o", "color": f"C{index % 10}"}
            time_ax.plot(xs, [r.median_ms for r in rows], label=f"{label} {mode}", **style)
            memory = [(x, r.peak_mem_bytes / 2**20) for x, r in zip(xs, rows, strict=True) if r.peak_mem_bytes]
            if memory:
                mem_ax.plot(*zip(*memory, strict=True), label=f"{label} {mode}", **style)
    for ax, ylabel in ((time_ax, "median time per call (ms)"), (mem_ax, "peak memory of one call (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    time_ax.legend(fontsize=7, ncol=2)
    figure.suptitle(f"{result.header.device_name}, {result.header.dtype}: sweep over {key}")
    figure.savefig(path, dpi=120)
    return path
