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
