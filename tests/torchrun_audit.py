"""Run the three scripts, one after another, as one torchrun worker, for tests/test_distributed.py.

    python -m torch.distributed.run --nproc_per_node 2 tests/torchrun_audit.py \
        train_sgd.py ARGS ::: train_pbfgs.py ARGS ::: train_psgd.py ARGS

Each script's own ``main`` runs unchanged (one process group for all: one launch instead of
three). Around them this records every file the process creates, writes, renames or deletes
(files_rank{RANK}.txt in $DLDR_AUDIT_DIR) and saves the process's final parameters after each
script (params_rank{RANK}_{i}.pt), so a test can check that only rank 0 wrote files and that
every rank ended with the same parameters.
"""
import builtins
import gc
import importlib
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUDIT = os.environ["DLDR_AUDIT_DIR"]
RANK = os.environ.get("RANK", "0")

_open, _os_open = builtins.open, os.open
_replace, _rename, _unlink = os.replace, os.rename, os.unlink
_log = _open(os.path.join(AUDIT, f"files_rank{RANK}.txt"), "a")


def _record(op, path):
    if str(path) != os.devnull:
        _log.write(f"{op} {path}\n")
        _log.flush()


def audited_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        _record("open", file)
    return _open(file, mode, *args, **kwargs)


def audited_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _record("os.open", path)
    return _os_open(path, flags, *args, **kwargs)


def runs(argv):
    """[(script, args), ...] from ``script ARGS ::: script ARGS ...``."""
    out, current = [], []
    for arg in argv + [":::"]:
        if arg == ":::":
            out.append((current[0], current[1:]))
            current = []
        else:
            current.append(arg)
    return out


def rng_probe(argv):
    """``rng_probe`` in place of a script: every process's generators saved by
    checkpoints.rng_state come back to that process (its own stream, not rank 0's), and the
    draws after a restore are those after the save. Returns a model whose parameters are the
    draws, so the audit saves them per rank."""
    import torch
    from dldr.checkpoints import rng_state, set_rng_state
    from dldr.distributed import init_distributed, seed_processes
    import models
    init_distributed(torch.device("cpu"))
    torch.manual_seed(7)
    model = models.build("tiny_stochasticdepth").train()
    seed_processes(7)
    saved = rng_state(model)
    expected = (torch.rand(4), model(torch.randn(2, 3, 32, 32)).detach(), torch.rand(4))
    set_rng_state(saved, model)
    again = (torch.rand(4), model(torch.randn(2, 3, 32, 32)).detach(), torch.rand(4))
    assert all(torch.equal(a, b) for a, b in zip(expected, again)), (expected, again)
    assert len(saved["processes"]) == 2
    draws = torch.nn.Linear(1, 4)
    with torch.no_grad():
        draws.weight.copy_(expected[0][:, None])
    return draws


def stopped_by_sigterm(argv):
    """``sigterm RANK EPOCH BATCH SCRIPT ARGS`` in place of a script: SCRIPT runs with the scripts'
    signal handlers, and process RANK alone sends itself SIGTERM during the step on batch BATCH
    of epoch EPOCH. Every process must stop at the same step, after one checkpoint of it."""
    from dldr import files
    import dldr.progress
    rank, epoch, batch, script, *args = argv
    update = dldr.progress.EpochProgress.update

    def signalled(progress, i, *rest):
        if RANK == rank and progress.epoch == int(epoch) and i == int(batch):
            os.kill(os.getpid(), signal.SIGTERM)
        return update(progress, i, *rest)

    dldr.progress.EpochProgress.update = signalled
    previous = files.install_signal_handlers()
    try:
        importlib.import_module(os.path.splitext(script)[0]).main(args)
        raise AssertionError(f"rank {RANK}: {script} was not stopped")
    except files.Interrupted as e:
        print(f"::: rank {RANK} stopped by {e}{e.where}", flush=True)
    finally:
        dldr.progress.EpochProgress.update = update
        for s, handler in previous.items():
            signal.signal(s, handler)
    return None


def main():
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import tiny_models
    tiny_models.register_all()
    builtins.open, os.open = audited_open, audited_os_open
    os.replace = lambda a, b, *x, **k: (_record("replace", b), _replace(a, b, *x, **k))[1]
    os.rename = lambda a, b, *x, **k: (_record("rename", b), _rename(a, b, *x, **k))[1]
    os.unlink = os.remove = lambda p, *x, **k: (_record("unlink", p), _unlink(p, *x, **k))[1]
    import torch
    import torch.distributed as dist

    import utils
    from dldr.files import release_locks
    try:
        for i, (script, argv) in enumerate(runs(sys.argv[1:])):
            if RANK == "0":  # where each script's output starts, for the tests
                print(f"::: script {i}", flush=True)
            if script == "rng_probe":
                model = rng_probe(argv)
            elif script == "sigterm":
                stopped_by_sigterm(argv)
                release_locks()
                # The stopped run's DDP model is garbage now: collected here, in every process
                # at once, not in the middle of the next run's collectives (which a stopped
                # process, ending, never sees)
                gc.collect()
                dist.barrier()
                continue
            else:
                module = importlib.import_module(os.path.splitext(os.path.basename(script))[0])
                model = module.main(argv)
                release_locks()  # as run_main does: the next script may resume it
            flat = torch.cat([p.detach().reshape(-1).cpu()
                              for p in utils.trainable_parameters(model)])
            with _open(os.path.join(AUDIT, f"params_rank{RANK}_{i}.pt"), "wb") as f:  # unaudited
                torch.save(flat, f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
