"""paddle2onnx jobs of one build, run by one long-lived worker process (sdc/compile/p2o_worker.py).

The trace stage submits each submodel's program as soon as it is saved, and the export stage collects
the graphs in the same order: the worker converts one submodel while the build traces the next (two
processes on two cores), and paddle2onnx's imports are paid once per build instead of once per
submodel (once per process when small builds follow each other: `release_worker`). A job that kills
the worker fails alone: the jobs queued behind it go to a fresh worker.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdc.errors import ExportError


class Worker:
    """The child process: jobs in on stdin, one answer line per job on a pipe of its own."""

    def __init__(self):
        env = dict(os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", GLOG_minloglevel="2")
        read_fd, write_fd = os.pipe()
        self.log = tempfile.TemporaryFile(mode="w+")  # paddle2onnx's own output: read back on failure
        self.proc = subprocess.Popen([sys.executable, "-m", "sdc.compile.p2o_worker", str(write_fd)],
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, text=True,
                                     env=env, pass_fds=(write_fd,))
        os.close(write_fd)
        self.answers = os.fdopen(read_fd, "r")
        self.ready = False

    def submit(self, program: Path, out: Path, opset: int) -> bool:
        """Queue a job; False when the process is gone."""
        try:
            self.proc.stdin.write(f"{program}\t{out}\t{opset}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def next_answer(self) -> str | None:
        """The answer to the oldest unanswered job; None when the process died."""
        if not self.ready:
            if self.answers.readline().strip() != "ready":
                return None
            self.ready = True
        line = self.answers.readline()
        return line.rstrip("\n") if line else None

    def death(self) -> str:
        code = self.proc.wait()
        self.log.seek(0)
        text = self.log.read()
        lines = [ln for ln in text.splitlines() if "ERROR" in ln or "Error" in ln]
        why = (lines[-1] if lines else (text.strip().splitlines() or ["no output"])[-1]).strip()
        return f"the worker died (exit {code}): {why[:300]}"

    def close(self) -> None:
        """Killed, not asked to exit: nothing more is read from it, and a clean exit costs a worker that is still
        importing (a build that failed early) its remaining imports, and one that is done Paddle's teardown."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):  # a job line it never read: the pipe is broken
            self.proc.stdin.close()
        self.answers.close()
        self.log.close()


@dataclass
class _Job:
    program: Path
    out: Path
    opset: int


_worker: Worker | None = None
_jobs: dict[str, _Job] = {}
_pending: list[str] = []  # submitted to the current worker, oldest first
_answers: dict[str, str] = {}


def start_worker() -> Worker:
    """The build's worker, started now if needed (so that its imports overlap the build's own work)."""
    global _worker
    if _worker is None:
        _worker = Worker()
        atexit.register(close_worker)
    return _worker


def close_worker() -> None:
    """Stop the worker (its memory is the size of Paddle); unanswered jobs go to the next one."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None
    _pending.clear()


KEEP_IDLE_BELOW = 1 << 30  # bytes of resident memory


def release_worker() -> None:
    """A build is done with the worker: keep it for this process's next build when it is alive, idle and
    under KEEP_IDLE_BELOW resident (a script or a test suite that builds several bundles skips paddle2onnx's
    imports, 1-2 s of CPU per build), else stop it (a worker that converted a real-size graph keeps that
    memory; one with jobs queued would answer them to the next build). The process's exit stops it."""
    if _worker is not None and not _pending and _worker.proc.poll() is None:
        rss = _resident_bytes(_worker.proc.pid)
        if rss is not None and rss < KEEP_IDLE_BELOW:
            return
    close_worker()


def _resident_bytes(pid: int) -> int | None:
    """VmRSS of a process from /proc (Linux); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def submit_paddle2onnx(key: str, program: Path, out: Path, opset: int) -> None:
    """Queue the conversion of `program` (a saved Paddle program's .json) to a weightless graph at `out`."""
    _jobs[key] = _Job(Path(program), Path(out), opset)
    _answers.pop(key, None)
    if start_worker().submit(program, out, opset):
        _pending.append(key)


def paddle2onnx_result(key: str) -> Path:
    """Wait for job `key`; its graph's path, or an ExportError naming the submodel."""
    if key not in _jobs:
        raise ExportError(f"{key}: no paddle2onnx job was submitted (trace it first)")
    job = _jobs[key]
    while key not in _answers:
        if key not in _pending:  # lost with a dead worker: a fresh one takes it
            close_worker()
            if not start_worker().submit(job.program, job.out, job.opset):
                _answers[key] = f"error {_worker.death()}"
                break
            _pending.append(key)
        head = _pending[0]
        answer = _worker.next_answer()
        if answer is None:
            _answers[head] = f"error {_worker.death()}"
            close_worker()
        else:
            _answers[_pending.pop(0)] = answer
    answer = _answers.pop(key)
    del _jobs[key]
    if answer != "ok" or not job.out.is_file() or job.out.stat().st_size == 0:
        why = answer.split(" ", 1)[1] if " " in answer else "wrote no graph"
        raise ExportError(f"{key}: paddle2onnx failed: {why}")
    return job.out


def run_paddle2onnx(program: Path, out: Path, opset: int, name: str) -> Path:
    """Convert one program now (tests and tools; the build submits early and collects later)."""
    submit_paddle2onnx(name, program, out, opset)
    return paddle2onnx_result(name)
