"""Files: atomic writes (temporary file, fsync, rename) that a signal cannot cut short, one writer
per output (an OS lock), and weights-only loading."""
import contextlib
import errno
import fcntl
import json
import os
import pickle
import pickletools
import signal
import tempfile
import warnings

import torch

from .cli import UsageError
from .distributed import is_main_process


class WriteError(Exception):
    """A write failed (no space, no permission, read-only filesystem): one line naming the file and
    the cause, exit status 1; no partial or temporary file is left. ``where`` and ``resumable`` say
    what of the run is saved (checkpoints.RunState fills them in; outside it nothing is)."""
    where, resumable = "", False


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the run stops (after finishing an atomic write in progress). A
    BaseException, as KeyboardInterrupt, so that no ``except Exception`` mistakes it for an error
    of its own. ``where`` says what of the run is saved (checkpoints.RunState fills it in);
    ``after_write``: raised once the file being written was whole."""

    def __init__(self, signum, after_write=False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.after_write = signum, after_write
        self.where, self.resumable = "", False


_writing = 0       # atomic writes in progress: a signal then waits for them to finish
_stepping = False  # training steps under way: a first signal waits for the step's end
_awaiting = False  # a signal waits for the processes to agree on it (torchrun: Run._signal)
_pending = None    # the signal that arrived meanwhile
_main_pid = None   # the process that installed the handler (DataLoader workers inherit it)


def install_signal_handlers():
    """SIGINT and SIGTERM stop the run through ``on_signal``; returns the handlers they replace."""
    global _pending, _awaiting, _main_pid
    _pending, _awaiting, _main_pid = None, False, os.getpid()
    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def on_signal(signum, frame):
    """Stop now, or after the write or step under way. A forked DataLoader worker ignores it: its
    process stops it (shutting the loader down, or the worker exits with it), and the batch the
    process waits for at a step's end still comes."""
    global _pending
    if os.getpid() != _main_pid:
        return
    if _writing or ((_stepping or _awaiting) and _pending is None):  # (a second one: at once)
        _pending = signum
    else:
        raise Interrupted(signum)


@contextlib.contextmanager
def signals_at_step_ends(agreed=False):
    """Training steps: SIGINT and SIGTERM wait for the step under way to end, where the loop asks
    ``take_pending_signal`` and checkpoints the run before it stops (Run.after_step); a second
    signal during a step stops it at once. One that arrives after the last step's question is
    acted on as the steps end; with ``agreed`` (torchrun, where the processes must stop at one
    step together) it waits for the next question, after the epoch's end."""
    global _stepping, _awaiting, _pending
    _stepping = True
    try:
        yield
    except BaseException:
        _pending = None  # the run stops anyway; what stops it is the line to print
        raise
    finally:
        _stepping = False
    if _pending is not None and agreed:
        _awaiting = True
    elif not _writing and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


def take_pending_signal():
    """The signal that arrived during the steps and waits (its number, now the caller's to act
    on), or None."""
    global _pending, _awaiting
    signum, _pending, _awaiting = _pending, None, False
    return signum


def _os_error(e):
    """The OSError behind an exception (torch.save reports a failed write as a RuntimeError whose
    context is the OSError), or None."""
    while e is not None:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


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

    A failed write leaves no temporary file and becomes a WriteError naming ``path`` and the cause;
    SIGINT/SIGTERM during the write take effect once it is complete. Under torchrun only rank 0
    writes: every process holds the same state, one copy is enough.
    """
    global _writing, _pending
    if not is_main_process():
        return
    folder = os.path.dirname(os.path.abspath(path))
    _writing += 1
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; samples are shared, so honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(e) if isinstance(e, (OSError, RuntimeError)) else None
        if cause is None:
            raise
        raise WriteError(f"{path}: cannot write it ({cause.strerror or cause})") from None
    finally:
        _writing -= 1
    if not (_writing or _stepping or _awaiting) and _pending is not None:  # the file is whole: stop
        signum, _pending = _pending, None
        raise Interrupted(signum, after_write=True)


def atomic_torch_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def _is_torch_file(path):
    """Whether the file starts as torch.save's zip archive does, or with a whole, well-formed
    pickle (as the legacy torch format and bare pickles do); random bytes do not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head == b"PK\x03\x04":  # a zip archive, maybe truncated
                return True
            if head[:1] != b"\x80":  # PROTO: every pickle of protocol 2 or later begins so
                return False
            f.seek(0)
            for _ in pickletools.genops(f):
                pass
        return True
    except Exception:
        return False


def safe_load(path, mmap=False):
    """torch.load with weights_only=True; any failure is a UsageError naming the file.

    A file that holds more than tensors (a crafted pickle) is refused without running anything;
    a file that is not a torch file (neither a zip archive nor a pickle) is said to be one.
    mmap=True maps the file instead of reading it: tensors read from it page by page on access.
    """
    try:
        with warnings.catch_warnings():  # torch's notes on the pickle protocol: not the user's
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file")
    except Exception as e:
        if not _is_torch_file(path):
            raise UsageError(f"{path}: not a torch file (neither the zip archive of torch.save "
                             "nor a pickle); samples and checkpoints are written by torch.save")
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise UsageError(f"{path}: refused: it holds more than tensors (objects or code that "
                             "loading would have to run), so it was not loaded and nothing in it "
                             "was executed; samples and checkpoints hold tensors only")
        raise Unreadable(f"{path}: not a loadable sample or checkpoint (truncated or foreign: "
                         f"{_first_line(e)})")


class Unreadable(UsageError):
    """A torch file that cannot be loaded (truncated, or written by another program): a caller
    that can make the file again (the basis file) rebuilds it instead of refusing."""


def _first_line(e):
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class OutputLock:
    """One writer per output: an exclusive OS lock (flock) on ``save_dir/.NAME.lock`` for the
    process's life, which the kernel releases when the process dies, so a killed run leaves no
    stale lock. The file holds the owner's process id, for the other run's error message."""

    def __init__(self, save_dir, name, what):
        self.path = os.path.join(save_dir, f".{name}.lock")
        self.save_dir, self.what = save_dir, what
        self.fd = None

    def _busy(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return True
            raise UsageError(f"--save-dir {self.save_dir}: cannot lock {self.path} "
                             f"({e.strerror}); this filesystem does not support file locks")

    def _refuse(self):
        try:
            with open(self.path) as f:
                owner = f.read().strip() or "unknown"
        except OSError:
            owner = "unknown"
        raise UsageError(f"--save-dir {self.save_dir}: another run (process {owner}) is writing "
                         f"{self.what} there; wait for it to end, or use another --save-dir"
                         " or --output-tag")

    def check(self):
        """Before any write: is the lock held by another run? Creates nothing. A shared probe, so
        that probes of several starting processes (torchrun's ranks) do not collide."""
        if not os.path.exists(self.path) or os.environ.get("RANK", "0") != "0":
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # unreadable: acquire() will name the cause
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                self._refuse()
            # a filesystem without locks (EBADF, ENOLCK): acquire() will say so
        finally:
            os.close(fd)  # closing releases our own probe

    def acquire(self):
        """Take the lock for this process's life (rank 0 only under torchrun)."""
        if not is_main_process():
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _file_mode())
        except OSError as e:
            raise WriteError(f"{self.path}: cannot write it ({e.strerror})") from None
        if self._busy(fd):
            os.close(fd)
            self._refuse()
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise WriteError(f"{self.path}: cannot write it ({e.strerror})") from None
        self.fd = fd
        _held.append(self)
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


_held = []  # the locks this process holds, released by release_locks() when a script's main ends


def release_locks():
    while _held:
        _held.pop().release()


def check_output_file(path, flag, writes=True):
    """``path`` can be written as a file (atomically: a temporary file in its folder, then a
    rename): not a folder, its folder exists and (unless not ``writes``: a command that only
    reads it if it is there) is writable; a UsageError naming ``flag`` otherwise. Checked before
    a command does its work, so the work is never lost to the path."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: a folder; give the path of a file in it")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist; create it or give "
                         "another path")
    if writes and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: its folder is not writable; give another path")


def check_writable_dir(folder, flag="--save-dir"):
    """``folder`` is a writable folder, or can be made one (its nearest existing parent is a
    writable folder): a UsageError naming ``flag`` otherwise. Creates nothing."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {folder}: cannot create it ({path} is not a folder)")
    if not os.access(path, os.W_OK | os.X_OK):
        what = "not writable" if path == os.path.abspath(folder) else f"{path} is not writable"
        raise UsageError(f"{flag} {folder}: {what}; choose another folder")


def make_dir(folder):
    """Create ``folder`` (and its parents) when a run starts writing; a WriteError if that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{folder}: cannot create it ({e.strerror})") from None
