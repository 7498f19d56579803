"""The paddle2onnx worker between builds: kept for the next build of this process only when alive, idle and small."""

from __future__ import annotations

import pytest

from sdc.compile import p2o
from sdc.compile.build import build
from sdc.compile.context import BuildOptions
from sdc.runtime.bundle import read_manifest
from tests.conftest import FIXTURES


@pytest.fixture
def fresh_worker():
    p2o.close_worker()
    yield p2o.start_worker()
    p2o.close_worker()


def test_an_idle_small_worker_is_kept(fresh_worker):
    p2o.release_worker()
    assert p2o._worker is fresh_worker and fresh_worker.proc.poll() is None


def test_a_worker_with_queued_jobs_is_stopped(fresh_worker, tmp_path):
    p2o.submit_paddle2onnx("queued", tmp_path / "missing.json", tmp_path / "out.onnx", 17)
    p2o.release_worker()  # its answer would go to the next build's first job
    assert p2o._worker is None and fresh_worker.proc.poll() is not None
    p2o._jobs.pop("queued", None)


def test_a_large_worker_is_stopped(fresh_worker, monkeypatch):
    monkeypatch.setattr(p2o, "KEEP_IDLE_BELOW", 1)  # every process is larger than one byte
    p2o.release_worker()
    assert p2o._worker is None and fresh_worker.proc.poll() is not None


def test_a_dead_worker_is_not_kept(fresh_worker):
    fresh_worker.proc.kill()
    fresh_worker.proc.wait()
    p2o.release_worker()
    assert p2o._worker is None


def test_consecutive_builds_share_one_worker_and_a_precision_build_frees_it(tmp_path):
    p2o.close_worker()
    only = BuildOptions(submodels=("vae_decoder",))
    build(FIXTURES / "sd1-tiny", tmp_path / "a.bundle", only)
    first = p2o._worker
    assert first is not None and first.proc.poll() is None  # kept after the build
    build(FIXTURES / "sd1-tiny", tmp_path / "b.bundle", only)
    assert p2o._worker is first and first.proc.poll() is None  # and used by the next one
    a, b = (read_manifest(tmp_path / n)["files"] for n in ("a.bundle", "b.bundle"))
    assert a == b  # the reused worker exports the same graphs
    # A build with a precision stage stops it after the last export (its memory goes to the precision stage).
    build(FIXTURES / "sd1-tiny", tmp_path / "c.bundle",
          BuildOptions(submodels=("vae_decoder",), precisions=("fp32", "w8")))
    assert first.proc.poll() is not None
