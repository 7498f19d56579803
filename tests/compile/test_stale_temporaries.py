"""A killed build leaves its temporary folder behind; the next build of the same OUT removes it, never a live one's."""

from __future__ import annotations

import os
import subprocess
import sys

from sdc.compile.output import remove_stale_temporaries
from sdc.compile.output import OWNER


def test_dead_builds_folders_go_live_ones_stay(tmp_path):
    out = tmp_path / "m.bundle"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".m.bundle.tmp-dead"
    stale.mkdir()
    (stale / OWNER).write_text(str(dead.pid))
    (stale / "unet").mkdir()
    live = tmp_path / ".m.bundle.tmp-live"
    live.mkdir()
    (live / OWNER).write_text(str(os.getpid()))
    other = tmp_path / ".other.bundle.tmp-x"  # another bundle's: not ours to judge
    other.mkdir()
    (other / OWNER).write_text(str(dead.pid))
    assert remove_stale_temporaries(out) >= 1
    assert not stale.exists() and live.exists() and other.exists()


def test_parked_old_bundle_is_put_back_when_the_swap_never_happened(tmp_path):
    """Where renameat2 exchange is missing, replace_dir parks the old bundle as `.OUT.old-PID` and then
    renames the new one in; killed between the two, OUT is missing: the next build puts the old one back."""
    out = tmp_path / "m.bundle"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parked = tmp_path / f".m.bundle.old-{dead.pid}"
    parked.mkdir()
    (parked / "manifest.json").write_text("{}")
    assert remove_stale_temporaries(out) == 1
    assert (out / "manifest.json").read_text() == "{}" and not parked.exists()
    # With OUT present (the swap did happen), a parked old bundle is just removed.
    parked.mkdir()
    (parked / "manifest.json").write_text("old")
    assert remove_stale_temporaries(out) == 1
    assert not parked.exists() and (out / "manifest.json").read_text() == "{}"


def test_replace_dir_swaps_whole_folders(tmp_path):
    from sdc.compile.output import replace_dir

    new, out = tmp_path / "new", tmp_path / "out"
    for folder, text in ((new, "new"), (out, "old")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
    replace_dir(new, out)
    assert (out / "manifest.json").read_text() == "new" and not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
