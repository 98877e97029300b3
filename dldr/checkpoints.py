"""Exact resume: everything a run needs to continue after an epoch as if it had never stopped."""
import os

import torch

from .cli import UsageError
from .files import safe_load


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


def checkpoint_state(epoch, model, stateful, train_loader, best_prec1, results):
    """Everything an exact resume needs after ``epoch``; ``stateful`` maps names to objects with
    ``state_dict()`` (optimizer, scheduler, scaler, P-BFGS)."""
    state = {"epoch": epoch, "model": model.state_dict(),
             "loader_rng": train_loader.generator.get_state(), "rng": rng_state(),
             "best_prec1": best_prec1, "results": results.data["epochs"]}
    state.update({name: obj.state_dict() for name, obj in stateful.items()})
    return state


def find_resume_checkpoint(resume, save_dir, name):
    """Path of the checkpoint to resume from: --resume PATH, or the save dir's ``name``."""
    path = os.path.join(save_dir, name) if resume == "auto" else resume
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def resume_run(path, model, stateful, train_loader, results):
    """Restore what ``checkpoint_state`` saved; returns (epochs done, best Prec@1)."""
    ckpt = safe_load(path)
    model.load_state_dict(ckpt["model"])
    for name, obj in stateful.items():
        obj.load_state_dict(ckpt[name])
    train_loader.generator.set_state(ckpt["loader_rng"])
    if hasattr(train_loader, "epoch"):  # a DistributedSampler's order depends on the epoch
        train_loader.epoch = ckpt["epoch"]
    set_rng_state(ckpt["rng"])
    results.data["epochs"] = ckpt["results"]
    print(f"=> resumed from {path} after epoch {ckpt['epoch']}", flush=True)
    return ckpt["epoch"], ckpt["best_prec1"]
