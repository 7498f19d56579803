"""Builds survive being killed, full disks, unwritable folders and a second build of the same output.

Each case runs the real CLI in a child process and checks what exists on disk afterwards: OUT is
either absent or a complete bundle (the old one, byte for byte, when a --force build was killed),
and the next build removes what killed builds left.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sdc.runtime.bundle import read_manifest, verify_files
from tests.conftest import FIXTURES, run_sdc

MODEL = FIXTURES / "sd1-tiny"
SMALL = ("--only", "vae_decoder")  # the quickest real build: every stage, one small submodel


def start_build(out: Path, *extra: str, preexec=None, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdc", "build", str(MODEL), "-o", str(out), *SMALL, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec,
                            env=env)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def snapshot(bundle: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def kill_when(proc: subprocess.Popen, out: Path, moment: str) -> None:
    """SIGKILL the build at `moment`: 'start' (in the imports), 'export' (mid-stages) or 'bundle' (its
    temporary folder holds a finished manifest: the last instant before the swap)."""
    deadline = time.monotonic() + 120
    if moment == "start":
        time.sleep(0.5)
    elif moment == "export":
        for line in proc.stdout:  # progress lines arrive as each stage finishes
            if "export" in line or time.monotonic() > deadline:
                break
    else:
        while time.monotonic() < deadline and proc.poll() is None:
            if any((p / "manifest.json").exists() for p in out.parent.glob(f".{out.name}.tmp-*")):
                break
            time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_force_builds_leave_the_old_bundle_untouched(bundles, tmp_path):
    """Killed while importing, mid-stages and at the last instant before the swap; then one clean build."""
    out = tmp_path / "m.bundle"
    shutil.copytree(bundles["sd1-tiny"], out)
    before = snapshot(out)
    for moment in ("start", "bundle", "export"):
        kill_when(start_build(out, "--force"), out, moment)
        after = snapshot(out)
        if moment == "bundle" and after != before:
            # The kill landed after the atomic swap: then OUT must be the new bundle, complete.
            verify_files(out, read_manifest(out))
            assert list(read_manifest(out)["submodels"]) == ["vae_decoder"]
            before = after
            continue
        assert after == before, f"the existing bundle changed under a build killed at {moment}"
    # Killed mid-build (export), its temporary folder is there; the next build removes it.
    assert any(".tmp-" in n for n in leftovers(out)), leftovers(out)
    # The next build removes what the killed ones left, and replaces the bundle completely.
    r = run_sdc("build", MODEL, "-o", out, *SMALL, "--force")
    assert r.returncode == 0, r.stderr
    assert "temporary folder(s) left by killed builds" in r.stderr
    assert leftovers(out) == []
    verify_files(out, read_manifest(out))
    assert list(read_manifest(out)["submodels"]) == ["vae_decoder"]


def test_killed_first_build_leaves_nothing_at_out(tmp_path):
    out = tmp_path / "m.bundle"
    kill_when(start_build(out), out, "export")
    assert not out.exists()  # (its temporaries go with the next build: the test above)


def test_two_builds_of_one_output_one_wins(tmp_path):
    out = tmp_path / "m.bundle"
    procs = [start_build(out), start_build(out)]
    results = [(p.wait(), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(text for code, text in results if code == 1)
    last = loser.strip().splitlines()[-1]
    assert last.startswith("error:") and ("another build of it is running" in last or "already exists" in last), last
    assert "Traceback" not in loser
    verify_files(out, read_manifest(out))
    assert leftovers(out) == []


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_failure_gives_one_line_and_nothing_written(tmp_path):
    """A real OS-level write failure: RLIMIT_FSIZE makes the kernel refuse writes past 64 KiB (EFBIG),
    as a full disk refuses them with ENOSPC (Python ignores SIGXFSZ, so the write fails, not the process)."""
    out = tmp_path / "m.bundle"
    proc = start_build(out, preexec=_file_size_limit(64 << 10))
    text = proc.communicate()[0]
    assert proc.returncode == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error:") and "file-size limit" in last and "Traceback" not in text, text[-2000:]
    assert not out.exists() and leftovers(out) == []


def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    r = run_sdc("build", MODEL, "-o", tmp_path / "plain" / "m.bundle", *SMALL)
    assert r.returncode == 1 and "not a folder" in r.stderr.strip().splitlines()[-1], r.stderr


@contextlib.contextmanager
def small_filesystem(options: str):
    """A real tmpfs mounted for the test (root and mount permission needed; else the test skips)."""
    point = Path(tempfile.mkdtemp(prefix="sdc-fs-"))
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                           text=True)
    except FileNotFoundError:
        r = None
    if r is None or r.returncode != 0:
        point.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission): " + (r.stderr.strip() if r else
                                                                                       "no mount command"))
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        point.rmdir()


def test_full_disk_on_a_real_small_filesystem():
    """A 256 KiB file system: the first weights fill it (ENOSPC)."""
    with small_filesystem("size=256k") as fs:
        out = fs / "m.bundle"
        r = run_sdc("build", MODEL, "-o", out, *SMALL)
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and "the disk is full" in last and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert list(fs.iterdir()) == []  # no bundle, no temporary, no lock


def test_unwritable_folder_is_refused_before_work(tmp_path):
    """Permission bits do not bind root: as root the folder is a read-only mount, otherwise mode 0555."""
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            folder = stack.enter_context(small_filesystem("size=1m,ro"))
        else:
            folder = tmp_path / "ro"
            folder.mkdir()
            folder.chmod(0o555)
            stack.callback(folder.chmod, 0o755)
        r = run_sdc("build", MODEL, "-o", folder / "m.bundle", *SMALL)
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and "not writable" in last, r.stderr
        assert list(folder.iterdir()) == []
