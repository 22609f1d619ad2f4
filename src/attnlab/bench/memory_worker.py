"""The CPU memory worker: ``python -m attnlab.bench.memory_worker``, driven by :mod:`attnlab.bench.memory`.

Reads pickled ``make_step`` callables from stdin until it closes; for each, builds the workload, runs one
warm-up call, then one measured call, and writes back (pickled) the peak resident set size of the
measured call above the resident size just before it. Run as a separate process so that the numbers are
this workload's alone, not the benchmark's (or pytest's) own memory.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import resource
import sys
from pathlib import Path
from typing import Any, BinaryIO

from attnlab.bench.devices import is_out_of_memory

__all__ = ["main"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _pin_malloc_thresholds() -> bool:
    """Make glibc return freed large blocks to the OS at once (else a freed tensor stays resident and the
    next call reuses it without the RSS rising, hiding its memory). Returns False without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    # Setting a threshold explicitly also turns off glibc's dynamic raising of it.
    return bool(libc.mallopt(m_mmap_threshold, 16 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in {_STATUS}")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, kB elsewhere


def measure(make_step: Any, pinned: bool) -> dict[str, Any]:
    """Build and run one workload; the reply for the parent."""
    idle_maxrss = _maxrss_bytes()  # fallback baseline: this process, idle, before building the workload
    step = make_step()
    step()  # warm-up: lazy initialisation, compilation, allocator caches
    gc.collect()
    before = _status_bytes("VmRSS") if _STATUS.exists() else 0
    reusable = _STATUS.exists() and _reset_peak_rss()
    step()
    if reusable:
        peak = _status_bytes("VmHWM") - before
        method = (
            "peak RSS (VmHWM, reset before the call) of a worker process during one call, above its RSS "
            f"just before the call{'' if pinned else '; glibc mmap threshold not pinned'}"
        )
    else:
        peak = _maxrss_bytes() - idle_maxrss
        method = "peak RSS (getrusage) of a fresh worker process running the workload, minus its idle baseline"
    del step
    gc.collect()
    return {"status": "ok", "peak_bytes": max(0, peak), "method": method, "reusable": reusable}


def main() -> None:
    pinned = _pin_malloc_thresholds()
    # The protocol owns the real stdout; anything printed (by Python or C code) goes to stderr instead.
    protocol_out: BinaryIO = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    protocol_in = sys.stdin.buffer
    while True:
        try:
            make_step = pickle.load(protocol_in)
        except EOFError:
            return
        try:
            reply = measure(make_step, pinned)
        except Exception as error:  # report any failure of the workload; the parent decides what to do
            reply = {
                "status": "error",
                "message": f"{type(error).__name__}: {error}",
                "out_of_memory": is_out_of_memory(error),
            }
        pickle.dump(reply, protocol_out)
        protocol_out.flush()
        if not reply.get("reusable", True):
            return


if __name__ == "__main__":
    main()
