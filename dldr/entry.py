"""The scripts' entry point, ``run_main``: how a run ends as a command line (one line and an exit
status for bad input, a failed write or a signal) and the command that resumes it."""
import os
import shlex
import signal
import sys

from . import files
from .cli import UsageError
from .distributed import is_main_process


# The flags a resume command leaves out (with their PATH where they take one)
_START_FLAGS = ("--resume", "--resume-weights", "--resume_weights", "--overwrite", "--reuse")


def _start_flag(token):
    """Which of _START_FLAGS ``token`` spells, as argparse reads it (a unique prefix, as in
    --overwri, or an exact name; with =PATH), or None."""
    name = token.split("=", 1)[0]
    if name in _START_FLAGS:
        return name
    hits = {f for f in _START_FLAGS if f.startswith(name) and len(name) > 2}
    if len({h.replace("_", "-") for h in hits}) == 1:  # (argparse refused an ambiguous one)
        return hits.pop().replace("_", "-")
    return None


def resume_command(argv):
    """The command line that resumes a run started with ``argv``: from the save dir's checkpoint,
    whatever --resume PATH, --overwrite or --reuse it was started with, spelt in full or not."""
    args, skip = [], 0
    for a in argv:
        if skip == 2 or (skip == 1 and not a.startswith("-")):  # the PATH of --resume(-weights)
            skip = 0
            continue
        flag = _start_flag(a) if a.startswith("--") else None
        takes_path = "=" not in a and flag in ("--resume", "--resume-weights", "--resume_weights")
        skip = (1 if flag == "--resume" else 2) if takes_path else 0
        if flag is None:
            args.append(a)
    args.append("--resume")
    script = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith(".py") else "SCRIPT.py"
    launcher = "torchrun ... " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "python "
    return launcher + shlex.join([script, *args])


def run_main(main, argv=None):
    """Run a script's ``main(argv)`` as its command line does: bad input is one line on stderr and
    exit status 2; a failed write one line and exit status 1; SIGINT and SIGTERM stop the run
    (after an atomic write in progress) with one line that says where it stopped and how to resume
    it, and exit status 130 or 143."""
    import torch
    import torch.distributed as dist
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    previous = files.install_signal_handlers()
    # --deterministic switches process-wide settings: a caller running several mains gets its own back
    settings = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark)
    try:
        result = main(argv)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process done before any tears the group down (Gloo aborts)
        return result
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except files.WriteError as e:
        again = (f"continue with: {resume_command(argv)}" if e.resumable
                 else "run the same command again")
        print(f"error: {e}{e.where}; fix the cause (space, permissions), then {again}",
              file=sys.stderr)
        sys.exit(1)
    except files.Interrupted as e:
        if is_main_process():
            again = (f"resume with: {resume_command(argv)}" if e.resumable
                     else "run the same command again")
            print(f"stopped by {e}{e.where}; {again}", file=sys.stderr)
        sys.exit(128 + e.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        files.release_locks()
        torch.use_deterministic_algorithms(settings[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = settings[1:]
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
