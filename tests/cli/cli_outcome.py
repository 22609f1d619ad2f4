"""Run ``attnlab`` commands as a user does and judge how each one ended (shared by the CLI fuzz tests).

A run may end in two ways only:

- success: exit 0, or exit 1 from ``attnlab check`` whose table shows a failed comparison;
- an error: exit 2 and exactly one line on stderr, ``attnlab COMMAND: error: ...``.

Anything else is a defect: a traceback, another exit code, a multi-line error, a hang (no exit within the
timeout) or a dead process. :class:`CliWorker` runs many commands, one at a time, in one child process
(torch is imported once, not per run), with a timeout per run; the child is this file run as a script.

Usage from a test (``tests/cli`` is on ``sys.path`` when pytest imports a test module there)::

    from cli_outcome import CliWorker

    with CliWorker(timeout=60, cwd=tmp_path) as worker:
        outcome = worker.run(["check", "--impl", "sdpa"])
        assert outcome.problem() is None, outcome.report()
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["CliWorker", "Outcome"]

_SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass(frozen=True)
class Outcome:
    """How one ``attnlab`` run ended. ``exit_code`` is None when it never exited (``timed_out``) or died."""

    argv: tuple[str, ...]
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""  # an exception that escaped attnlab.cli.main
    timed_out: bool = False
    timeout: float | None = None

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""

    def problem(self) -> str | None:
        """None when the run ended in success or in a one-line error with exit code 2; else what is wrong."""
        if self.timed_out:
            return f"no exit within {self.timeout} s: a hang (or work far too large for a test run)"
        if self.traceback:
            return "an exception escaped main()"
        if self.exit_code is None:
            return "the process died (killed, e.g. out of memory, or crashed)"
        if "Traceback (most recent call last)" in self.stderr:
            return "a traceback on stderr"
        if self.exit_code == 0:
            return None
        if self.exit_code == 1:
            failed_check = self.command == "check" and " fail " in self.stdout and not self.stderr.strip()
            return None if failed_check else "exit code 1, which only a check that found a mismatch may return"
        if self.exit_code == 2:
            lines = self.stderr.strip().splitlines()
            if len(lines) == 1 and lines[0].startswith(f"attnlab {self.command}: error: "):
                return None
            return f"exit code 2 but stderr is not one 'attnlab {self.command}: error: ...' line"
        return f"exit code {self.exit_code}"

    @property
    def kind(self) -> str:
        """``success``, ``check-failed``, ``error`` (a clean exit 2) or ``defect``."""
        if self.problem() is not None:
            return "defect"
        return {0: "success", 1: "check-failed"}.get(self.exit_code, "error")

    def report(self) -> str:
        """Everything needed to reproduce and understand the run (for assertion messages)."""
        return (
            f"attnlab {' '.join(repr(a) if not a or ' ' in a else a for a in self.argv)}\n"
            f"problem: {self.problem()}\nexit code: {self.exit_code}\n"
            f"--- stderr ---\n{self.stderr[-3000:]}\n--- stdout ---\n{self.stdout[-3000:]}\n"
            f"--- traceback ---\n{self.traceback}"
        )


class CliWorker:
    """A child process that runs ``attnlab.cli.main(argv)`` for each :meth:`run`, ``timeout`` seconds each.

    After a timeout or a death the child is killed and the next run starts a fresh one. ``cwd`` is where
    the commands run (relative output paths land there).
    """

    def __init__(self, timeout: float = 60.0, cwd: str | Path | None = None) -> None:
        self.timeout = timeout
        self.cwd = cwd
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stderr: IO[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None:
            self._stderr = tempfile.TemporaryFile(mode="w+")  # the child's own stderr (C-level output)
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                cwd=self.cwd,
                text=True,
                encoding="utf-8",
                errors="surrogateescape",
            )
            self._replies = queue.Queue()
            threading.Thread(target=_read_lines, args=(self._proc.stdout, self._replies), daemon=True).start()
        return self._proc

    def _child_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-3000:]

    def run(self, argv: list[str] | tuple[str, ...]) -> Outcome:
        argv = tuple(argv)
        proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(list(argv)) + "\n")
            proc.stdin.flush()
            line = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            self.close(kill=True)
            return Outcome(argv, None, timed_out=True, timeout=self.timeout)
        except BrokenPipeError:
            line = None
        if line is None:  # the child died: the end of its stdout
            code = proc.wait()
            stderr = f"worker exited with code {code}\n{self._child_stderr()}"
            self.close(kill=True)
            return Outcome(argv, None, stderr=stderr)
        reply = json.loads(line)
        return Outcome(argv, reply["exit_code"], reply["stdout"], reply["stderr"], reply["traceback"])

    def close(self, kill: bool = False) -> None:
        if self._proc is not None:
            if kill:
                self._proc.kill()
            elif self._proc.stdin is not None:
                self._proc.stdin.close()  # end of input: the child exits
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> CliWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_lines(stream: IO[str], replies: queue.Queue[str | None]) -> None:
    for line in stream:
        replies.put(line)
    replies.put(None)


def _run_one(main, argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    exit_code, escaped = None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exit_code = main(argv)
        except SystemExit as exit_:  # argparse: --help, usage errors
            if exit_.code is None or isinstance(exit_.code, int):
                exit_code = exit_.code or 0
            else:  # sys.exit("message"): Python prints the message and exits with 1
                print(exit_.code, file=sys.stderr)
                exit_code = 1
        except Exception:
            escaped = traceback.format_exc()
    return {"exit_code": exit_code, "stdout": out.getvalue(), "stderr": err.getvalue(), "traceback": escaped}


def _serve() -> None:
    """The child: read one JSON argv per line from stdin, answer one JSON line per run."""
    sys.path.insert(0, str(_SRC))  # this checkout's attnlab, whatever is installed
    from attnlab.cli import main

    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="surrogateescape")
    os.dup2(2, 1)  # output written by C code (or a stray print) must not garble the replies
    for line in sys.stdin:
        reply = _run_one(main, json.loads(line))
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


if __name__ == "__main__":
    _serve()
