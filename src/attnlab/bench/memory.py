"""Peak memory of one call of a workload, measured for real on each device.

A workload is given as ``make_step``: a picklable zero-argument callable that builds everything (module,
input) and returns ``step``, the zero-argument callable to measure. The meter calls ``step`` once to
warm up (lazy initialisation and compilation are not the call's memory), then once more, measured.
The number reported is the peak *above* what was held just before the measured call, so the module's
weights and the input are not counted, only what the call itself allocates (activations, scores,
outputs, gradients).

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in this process.
- CPU: a worker process (:mod:`attnlab.bench.memory_worker`) runs the workload and reads its peak
  resident set size. On Linux it resets the peak before the measured call (``/proc/self/clear_refs``)
  and pins glibc's mmap threshold so that freed tensors really leave the resident set; elsewhere a
  fresh worker per workload reports ``getrusage`` peak RSS minus its own idle baseline.
- MPS: PyTorch has no peak-memory counter for MPS; memory is not measured.
"""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

import torch

from .devices import is_out_of_memory

__all__ = ["MemoryMeter", "MemoryResult", "WorkloadError", "memory_meter"]

MakeStep = Callable[[], Callable[[], object]]


@dataclass(frozen=True)
class MemoryResult:
    """Peak bytes of one call above the bytes held before it; ``None`` where not measured."""

    peak_bytes: int | None
    method: str


class WorkloadError(RuntimeError):
    """The workload failed while its memory was measured; ``out_of_memory`` says whether it ran out."""

    def __init__(self, message: str, out_of_memory: bool) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class MemoryMeter(Protocol):
    """Measures one workload's peak memory; a context manager so workers are cleaned up."""

    method: str

    def measure(self, make_step: MakeStep) -> MemoryResult: ...

    def __enter__(self) -> MemoryMeter: ...

    def __exit__(self, *exc: object) -> None: ...


class _NoMeter:
    def __init__(self, method: str) -> None:
        self.method = method

    def measure(self, make_step: MakeStep) -> MemoryResult:
        return MemoryResult(None, self.method)

    def __enter__(self) -> _NoMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _CudaMeter:
    method = "torch.cuda.max_memory_allocated during one call, above the memory allocated before it"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def measure(self, make_step: MakeStep) -> MemoryResult:
        try:
            step = make_step()
            step()  # warm-up
            torch.cuda.synchronize(self.device)
            gc.collect()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            step()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - before
        except Exception as error:  # as the CPU worker reports it: the timings already taken stay valid
            raise WorkloadError(f"{type(error).__name__}: {error}", out_of_memory=is_out_of_memory(error)) from error
        finally:
            step = None
            gc.collect()
            torch.cuda.empty_cache()
        return MemoryResult(int(peak), self.method)

    def __enter__(self) -> _CudaMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _WorkerMeter:
    """Sends workloads to a ``python -m attnlab.bench.memory_worker`` process over pipes (pickle)."""

    def __init__(self) -> None:
        self.method = "peak RSS of a worker process during one call, above its RSS before the call"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            # The worker's warnings go to a file: they must not garble the progress display.
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "attnlab.bench.memory_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        return self._proc

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def measure(self, make_step: MakeStep) -> MemoryResult:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            pickle.dump(make_step, proc.stdin)
            proc.stdin.flush()
            reply = pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            code = proc.wait()
            tail = self._stderr_tail()
            self.close()
            # A worker killed by the kernel's OOM killer dies with SIGKILL (-9).
            raise WorkloadError(
                f"memory worker died (exit code {code}) {tail}".strip(), out_of_memory=code == -9
            ) from None
        if reply["status"] != "ok":
            raise WorkloadError(reply["message"], out_of_memory=reply["out_of_memory"])
        self.method = reply["method"]
        if not reply["reusable"]:  # the worker could not reset its peak: the next workload needs a fresh one
            self.close()
        return MemoryResult(reply["peak_bytes"], self.method)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # end of input: the worker exits
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> _WorkerMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_meter(device: torch.device, enabled: bool = True) -> MemoryMeter:
    """The meter for ``device`` (use it as a context manager); a no-op meter when not ``enabled``."""
    if not enabled:
        return _NoMeter("not measured (disabled)")
    if device.type == "cuda":
        return _CudaMeter(device)
    if device.type == "cpu":
        return _WorkerMeter()
    return _NoMeter(f"not measured: PyTorch has no peak-memory counter for {device.type}")
