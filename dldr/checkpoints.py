"""Exact resume: everything a run needs to continue after an epoch as if it had never stopped."""
import contextlib
import os
import warnings

import torch

from .cli import UsageError
from .files import Interrupted, WriteError, atomic_torch_save, safe_load
from .samples import name_list


def rng_state():
    """The generators the runs draw from: torch's (initialisation, dropout) and CUDA's."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(epoch, model, stateful, train_loader, best_prec1, results, identity):
    """Everything an exact resume needs after ``epoch``; ``stateful`` maps names to objects with
    ``state_dict()`` (optimizer, scheduler, scaler, P-BFGS); ``identity``: what defines the run
    (``check_same_run``)."""
    state = {"epoch": epoch, "run": identity, "model": model.state_dict(),
             "loader_rng": train_loader.generator.get_state(), "rng": rng_state(),
             "loader_epoch": getattr(train_loader, "epoch", None),
             "best_prec1": best_prec1, "results": results.data["epochs"],
             "results_start": results.data.get("start")}
    state.update({name: obj.state_dict() for name, obj in stateful.items()})
    return state


def find_resume_checkpoint(resume, save_dir, name):
    """Path of the checkpoint to resume from: --resume PATH, or the save dir's ``name``."""
    path = os.path.join(save_dir, name) if resume == "auto" else resume
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def checkpoint_weights(ckpt, path):
    """The model state dict inside a checkpoint: ours ("model"), the authors' ("state_dict", keys
    prefixed 'module.' by DataParallel), or a bare state dict (a sample or a final model)."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = ckpt["model"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        state = ckpt
    else:
        raise UsageError(f"{path}: neither a checkpoint nor a model state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strictly(model, state, path):
    """Every entry of ``model``'s state dict from ``state``, and nothing else: a UsageError
    naming the file and the entries that are missing, unexpected or of another shape."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shaped:
        said = [f"{what} {name_list(keys)}" for what, keys in (
            ("no", missing), ("unexpected", extra), ("another shape for", shaped)) if keys]
        raise UsageError(f"{path}: does not fit --arch ({'; '.join(said)})")
    model.load_state_dict(state)


def load_weights(path, model):
    """``-e --resume PATH``: the weights of any checkpoint or state dict into ``model``."""
    load_strictly(model, checkpoint_weights(safe_load(path), path), path)


def fast_forward(scheduler, epochs):
    """Step a learning-rate schedule to where it stands after ``epochs`` epochs (the authors'
    ``last_epoch=start_epoch - 1``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()": on purpose here
        for _ in range(epochs):
            scheduler.step()


# How a difference in a run's identity is named: its flag (a dest's own spelling otherwise)
_FLAGS = {"batch_size": "--batch-size", "weight_decay": "--weight-decay", "adam_lr": "--adam-lr",
          "train_start": "--train-start", "method": "the script"}


def check_same_run(path, ckpt, identity, epochs=None):
    """--resume continues the run that wrote ``ckpt`` or refuses: every entry of ``identity``
    (what defines the run: data, samples and their fingerprint, basis, start, the method's
    settings) must equal the checkpoint's record, and --epochs must reach its epoch. A
    checkpoint of the authors' scripts records nothing to compare; one of an older version of
    these scripts is noted."""
    if not (isinstance(ckpt, dict) and "model" in ckpt):
        return
    recorded = ckpt.get("run")
    if recorded is None:
        print(f"=> note: {path} predates run records, so it cannot be checked to be this run's; "
              "resuming it as it is", flush=True)
    else:
        differ = [key for key in sorted(set(recorded) | set(identity))
                  if recorded.get(key) != identity.get(key)]
        if differ:
            said = ["the samples changed since it was written" if key == "samples" else
                    f"{_FLAGS.get(key, '--' + key)} {identity.get(key)} here, "
                    f"{recorded.get(key)} there" for key in differ]
            raise UsageError(f"--resume: {path} holds another run ({'; '.join(said)}); resume "
                             "with the settings it was started with, or start a new run without "
                             "--resume (another --save-dir or --output-tag)")
    done = int(ckpt.get("epoch", 0))
    if epochs is not None and epochs < done:
        raise UsageError(f"--epochs {epochs}: {path} already holds {done} epochs; use --epochs "
                         f">= {done} to continue it")


def load_resume(resume, save_dir, name):
    """--resume: (path, the checkpoint read from it) of the checkpoint to continue."""
    path = find_resume_checkpoint(resume, save_dir, name)
    return path, safe_load(path)


def resume_run(path, ckpt, model, stateful, train_loader, results):
    """Restore what ``checkpoint_state`` saved in ``ckpt`` (read from ``path``); returns (epochs
    done, best Prec@1).

    A checkpoint of the authors' scripts (checkpoint_refine_E.th) holds the weights, the epoch and
    the best Prec@1 only: those are restored and the schedule stepped to the epoch; the optimizer,
    the data order and the random generators start afresh, as in the authors' --resume.
    """
    if not (isinstance(ckpt, dict) and "model" in ckpt):
        load_strictly(model, checkpoint_weights(ckpt, path), path)
        epoch = int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
        if "scheduler" in stateful:
            fast_forward(stateful["scheduler"], epoch)
        print(f"=> resumed from {path} after epoch {epoch}: a checkpoint without optimizer, data "
              "order or random state (the authors' format), which start afresh", flush=True)
        return epoch, float(ckpt.get("best_prec1", 0.0)) if isinstance(ckpt, dict) else 0.0
    load_strictly(model, ckpt["model"], path)
    for name, obj in stateful.items():
        try:
            obj.load_state_dict(ckpt[name])
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{path}: its {name} state does not fit this run ({e}); it was "
                             "written by another script or version")
    train_loader.generator.set_state(ckpt["loader_rng"])
    if hasattr(train_loader, "epoch"):  # a DistributedSampler's order depends on the epoch
        train_loader.epoch = ckpt.get("loader_epoch", ckpt["epoch"])
    set_rng_state(ckpt["rng"])
    results.data["epochs"] = ckpt["results"]
    if ckpt.get("results_start") is not None:
        results.data["start"] = ckpt["results_start"]
    print(f"=> resumed from {path} after epoch {ckpt['epoch']}", flush=True)
    return ckpt["epoch"], ckpt["best_prec1"]


class RunState:
    """Where a run stands, for the line it prints when a signal or a failed write stops it: the
    epoch under way and the last epoch its checkpoint holds (None: nothing to resume yet)."""

    def __init__(self, checkpoint_path):
        self.checkpoint_path = checkpoint_path
        self.epoch = self.saved = None
        self.trained = False  # the epochs are done: what remains is the final evaluation and writes

    def save(self, ckpt):
        """Write the checkpoint ``ckpt`` (``checkpoint_state``'s) and note its epoch as saved; a
        signal that arrived during the write takes effect once the file is whole."""
        try:
            atomic_torch_save(ckpt, self.checkpoint_path)
        except Interrupted as e:
            if e.after_write:
                self.saved = ckpt["epoch"]
            raise
        self.saved = ckpt["epoch"]

    @contextlib.contextmanager
    def guard(self):
        """Around the part of a run that writes: a stop says what is saved and whether --resume
        can take it from there."""
        try:
            yield self
        except (Interrupted, WriteError) as e:
            when = (" after training" if self.trained else f" during epoch {self.epoch}"
                    if self.epoch is not None else " before training")
            if self.saved is None:
                e.where, e.resumable = f"{when}; nothing saved yet to resume from", False
            else:
                e.where = (f"{when}; {os.path.basename(self.checkpoint_path)} holds the run "
                           f"after {self.saved} epochs")
                e.resumable = True
            raise
