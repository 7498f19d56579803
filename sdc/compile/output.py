"""The build's output folder, written like a database commit: locked, built aside, swapped in atomically.

- `check_output`: refuse to overwrite unless asked, before any work.
- `OutputLock`: one build per OUT at a time (an flock on `.OUT.lock` beside it, released by the kernel
  when the process dies, SIGKILL included); a second build of the same OUT fails at once.
- `remove_stale_temporaries`: temporaries of killed builds (`.OUT.tmp-*`, `.OUT.old-*`, scratch folders in
  the system temp dir) are removed by the next build; a live build's are never touched.
- `replace_dir`: the finished folder takes OUT's place in one step. On Linux, renameat2(RENAME_EXCHANGE)
  swaps the new and the old bundle atomically, so at every instant OUT is either the old bundle or the new
  one, whatever kills the process; elsewhere two renames, and a kill between them is repaired by the next
  build (the old bundle, parked as `.OUT.old-PID`, is moved back).
- `environment_error`: a full disk, a file-size limit, a read-only or unwritable folder, as a one-line
  OutputError instead of a traceback from whichever library was writing.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

from sdc.errors import InputError, OutputError
from sdc.runtime.bundle import MANIFEST

RETRY = "(free space, raise the limit or choose another folder, then build again)"
OWNER = ".sdc-build-owner"  # in a build's temporary folder: the pid writing it (removed before hashing)
ENV_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
              errno.EFBIG: "a file-size limit was hit", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
# How C++ libraries (Paddle, paddle2onnx, onnxruntime) word the same failures in their exception texts.
ENV_MESSAGES = {"No space left on device": errno.ENOSPC, "File too large": errno.EFBIG,
                "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS,
                "Permission denied": errno.EACCES}


def check_output(out: Path, force: bool) -> None:
    """Refuse to overwrite unless asked, and refuse an unwritable place: decided before any work."""
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an sdc bundle; refusing to replace it, choose another path")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: not a folder; choose an output path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: not writable by this user; choose a writable folder for {out.name}")


def environment_error(e: BaseException, out: Path) -> OutputError | None:
    """The one-line error for a write that failed because of the machine (disk, limits, permissions), else None."""
    code = getattr(e, "errno", None)
    if code not in ENV_ERRNOS:
        text = str(e)
        code = next((c for m, c in ENV_MESSAGES.items() if m in text), None)
        if code is None:
            return None
    where = getattr(e, "filename", None) or out.parent
    return OutputError(f"{where}: {ENV_ERRNOS[code]} while writing the bundle; nothing was written to {out} {RETRY}")


def incomplete_write(path: Path, out: Path) -> OutputError:
    """For a file a library wrote without reporting an error, found short when read back (Paddle's
    program writer ignores failed writes): the likeliest machine cause, in one line."""
    import resource

    size = path.stat().st_size if path.exists() else 0
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and size >= soft:
        cause = "a file-size limit was hit (ulimit -f)"
    elif shutil.disk_usage(path.parent).free < (1 << 20):
        cause = "the disk is full"
    else:
        cause = "the file system dropped part of the write"
    return OutputError(f"{path}: written incompletely ({size} bytes): {cause}; nothing was written to {out} {RETRY}")


class OutputLock:
    """An exclusive, non-blocking lock on `.OUT.lock` for the length of one build."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out.with_name(f".{out.name}.lock")
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
                os.close(fd)
                raise OutputError(f"{self.out}: another build of it is running (pid {holder}); wait for it to "
                                  f"finish or choose another output path")
            # The file may have been unlinked by the previous holder between our open and our lock:
            # then we hold a lock nobody else can see; try again on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()  # while still holding it: a waiting opener re-checks the inode
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def claim(folder: Path) -> None:
    (folder / OWNER).write_text(str(os.getpid()), encoding="utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_at(name: str, index: int) -> int | None:
    """The pid written into a temporary's name (`.OUT.old-PID`: last part; `sdc-build-PID-xxxx`: third)."""
    try:
        return int(name.split("-")[index])
    except (IndexError, ValueError):
        return None


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporary folders of earlier builds of `out` whose process is gone (killed, crashed).

    A temporary folder is stale when the pid it names is not running, or when it names none (it was
    killed before writing it) and is over an hour old; a live build's folder is never touched. An old
    bundle parked by a build killed between its two renames is put back when OUT is missing.
    Call with the output lock held.
    """
    removed = 0
    parent = out.parent
    if parent.is_dir():
        for old in sorted(parent.glob(f".{out.name}.old-*")):
            pid = _pid_at(old.name, -1)
            if pid is not None and _alive(pid):
                continue
            if not out.exists() and (old / MANIFEST).is_file():
                os.replace(old, out)  # the swap never happened: the old bundle is still the bundle
            else:
                shutil.rmtree(old, ignore_errors=True)
            removed += 1
    tmp_prefix = f".{out.name}.tmp-"
    candidates = list(parent.glob(f"{tmp_prefix}*")) if parent.is_dir() else []
    candidates += list(Path(tempfile.gettempdir()).glob("sdc-build-*-*"))
    for folder in candidates:
        if not folder.is_dir():
            continue
        owner = folder / OWNER
        pid = None
        if owner.is_file():
            try:
                pid = int(owner.read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                pid = None
        elif folder.name.startswith("sdc-build-"):
            pid = _pid_at(folder.name, 2)
        else:  # `.OUT.tmp-PID-xxxx` (older builds wrote no pid into the name)
            pid = _pid_at(folder.name[len(tmp_prefix):], 0)
        stale = (pid is not None and not _alive(pid)) or (pid is None and time.time() - folder.stat().st_mtime > 3600)
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system lacks it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished bundle `src` to `dst`; an existing bundle there is replaced in one atomic step."""
    if not dst.exists():
        os.replace(src, dst)
        return
    # The old bundle is parked under a name the stale cleaner knows, then deleted.
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if _exchange(src, dst):
        os.replace(src, old)  # src holds the old bundle now
    else:
        os.replace(dst, old)
        os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
