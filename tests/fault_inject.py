"""Run one of the scripts with a write that fails with ENOSPC, for tests/test_faults.py.

    DLDR_FAIL_WRITE=2.pt:1 python tests/fault_inject.py train_sgd.py ARGS

The script's own entry point runs unchanged; around it, the N-th atomic write of the file named
(its temporary file's first write) raises OSError(ENOSPC), as a full disk does.
"""
import errno
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, COUNT = os.environ["DLDR_FAIL_WRITE"].split(":")
_fdopen, seen = os.fdopen, {"n": 0}


class FullDisk:
    """A file object whose writes fail with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fdopen(fd, *args, **kwargs):
    f = _fdopen(fd, *args, **kwargs)
    target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if target.startswith(f".{NAME}.") and target.endswith(".tmp"):
        seen["n"] += 1
        if seen["n"] == int(COUNT):
            return FullDisk(f)
    return f


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.fdopen = fdopen
    import utils
    script = sys.argv[1]
    sys.argv = [os.path.join(ROOT, script), *sys.argv[2:]]
    utils.run_main(importlib.import_module(script[:-3]).main)
