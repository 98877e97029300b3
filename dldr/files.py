"""Files: atomic writes (temporary file, fsync, rename) and weights-only loading."""
import json
import os
import tempfile

import torch

from .cli import UsageError
from .distributed import is_main_process


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write):
    """Write through ``write(file)`` into a temporary file beside ``path``, fsync, then rename.

    Under torchrun only rank 0 writes: every process holds the same state, one copy is enough.
    """
    if not is_main_process():
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; samples are shared, so honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def safe_load(path, mmap=False):
    """torch.load with weights_only=True; any failure is a UsageError naming the file.

    mmap=True maps the file instead of reading it: tensors read from it page by page on access.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: not a loadable sample or checkpoint (truncated, foreign or "
                         f"unsafe: {first[:200]})")


def check_writable_dir(folder, flag="--save-dir"):
    """Create ``folder`` if needed; a UsageError naming ``flag`` when that fails or it is read-only."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot create it ({e.strerror})")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {folder}: not writable; choose another folder")
