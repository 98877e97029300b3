"""Exact resume: everything a run needs to continue after an epoch as if it had never stopped."""
import contextlib
import os
import warnings

import torch

from .cli import UsageError
from .distributed import all_gather_objects, world
from .files import Interrupted, WriteError, atomic_torch_save, safe_load
from .samples import name_list


def _generators(model):
    """The random generators a model owns (stochastic depth's survival draws), by module name."""
    return {name: m.random_generator for name, m in model.named_modules()
            if isinstance(getattr(m, "random_generator", None), torch.Generator)}


def rng_state(model):
    """Every process's generators, as a list indexed by rank: torch's (initialisation, dropout),
    CUDA's on this process's device, and the model's own (``_generators``). Gathered from all
    processes, since only rank 0 writes the checkpoint."""
    state = {"torch": torch.get_rng_state(),
             "generators": {name: g.get_state() for name, g in _generators(model).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return {"processes": all_gather_objects(state)}


def set_rng_state(state, model):
    """Restore this process's part of ``rng_state``'s record. A record of another number of
    processes is refused by ``check_same_processes`` before anything is written; one of an older
    version (a single process, CUDA's state of every device) gives each device its own."""
    if "processes" in state:
        rank, size = world()
        if len(state["processes"]) != size:
            raise UsageError(f"the checkpoint holds the random state of {len(state['processes'])} "
                             f"processes, this run has {size}")
        state = state["processes"][rank]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if isinstance(saved, (list, tuple)):  # older record: every visible device's
            index = torch.cuda.current_device()
            saved = saved[index] if index < len(saved) else None
        if saved is not None:
            torch.cuda.set_rng_state(saved, torch.cuda.current_device())
    own = _generators(model)
    for name, g in state.get("generators", {}).items():
        if name in own:
            own[name].set_state(g)


def check_same_processes(path, ckpt):
    """--resume with the number of processes the checkpoint was written by, or one line: each
    process continues its own random streams (and a DataLoader's shard), which another number of
    processes cannot."""
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("rng"), dict)):
        return
    saved = len(ckpt["rng"].get("processes", [None]))
    here = int(os.environ.get("WORLD_SIZE", "1"))
    if saved != here:
        launch = (f"torchrun --nproc_per_node {saved} (or nodes x processes = {saved})"
                  if saved > 1 else "python, without torchrun")
        raise UsageError(f"--resume: {path} was written by {saved} process"
                         f"{'es' if saved > 1 else ''} and this run has {here}; each process "
                         f"continues its own random streams, so resume it with {launch}")


class StartWeights:
    """The weights a --resume-weights run started from (its trainable parameters, flat), kept in
    its checkpoints: a resumed run measures its coordinates and distance from them, not from the
    file, which may have been replaced or moved since."""
    optional = True  # a checkpoint written before it existed lacks it

    def __init__(self):
        self.vector = None

    def state_dict(self):
        return {"vector": self.vector}

    def load_state_dict(self, state):
        self.vector = state["vector"]


def checkpoint_state(epoch, model, stateful, train_loader, best_prec1, results, identity,
                     batch=0, progress=None):
    """Everything an exact resume needs after ``epoch`` epochs and ``batch`` batches of the next
    (one inside an epoch: the loader's generator as that epoch began, and every process's meters
    of it, ``progress``); ``stateful`` maps names to objects with ``state_dict()`` (optimizer,
    scheduler, scaler, P-BFGS); ``identity``: what defines the run (``check_same_run``)."""
    if batch:
        loader_rng, loader_epoch = train_loader.epoch_start
    else:
        loader_rng, loader_epoch = (train_loader.generator.get_state(),
                                    getattr(train_loader, "epoch", None))
    state = {"epoch": epoch, "run": identity, "model": model.state_dict(),
             "loader_rng": loader_rng, "rng": rng_state(model), "loader_epoch": loader_epoch,
             "best_prec1": best_prec1, "results": results.data["epochs"],
             "results_start": results.data.get("start")}
    if batch:
        state.update(batch=batch, progress=all_gather_objects(progress.state_dict()))
    if "samples" in results.data:  # the steps of samples taken by step
        state["samples"] = results.data["samples"]
    state.update({name: obj.state_dict() for name, obj in stateful.items()})
    return state


def find_resume_checkpoint(resume, save_dir, name):
    """Path of the checkpoint to resume from: --resume PATH, or the save dir's ``name``."""
    path = os.path.join(save_dir, name) if resume == "auto" else resume
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def checkpoint_kind(ckpt):
    """What a file read as a checkpoint holds: "run" (a checkpoint of these scripts), "authors"
    (the authors' checkpoint_refine_E.th or model.th: "state_dict", the epoch, the best Prec@1),
    "weights" (a bare state dict: a sample or a final model), or None (none of these)."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return "run"
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return "authors"
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return "weights"
    return None


def describe_file(ckpt, path):
    """How a refusal names what ``path`` (read as ``ckpt``) is."""
    kind, name = checkpoint_kind(ckpt), os.path.basename(path)
    if kind == "weights":
        stem = name[:-3] if name.endswith(".pt") else ""
        return (f"a sample of the trajectory (the weights after epoch {stem})" if stem.isdigit()
                else "model weights only (a final model such as TWA.pt, PSGD.pt or SWA.pt)")
    if kind == "authors":
        return ("a checkpoint of the authors' scripts, which records no run to check against "
                "this one")
    if kind == "run":
        return "a checkpoint of these scripts"
    return "neither a checkpoint nor a model state dict"


def checkpoint_weights(ckpt, path):
    """The model state dict inside a checkpoint: ours ("model"), the authors' ("state_dict", keys
    prefixed 'module.' by DataParallel), or a bare state dict (a sample or a final model)."""
    kind = checkpoint_kind(ckpt)
    if kind is None:
        raise UsageError(f"{path}: neither a checkpoint nor a model state dict")
    state = ckpt["model"] if kind == "run" else ckpt["state_dict"] if kind == "authors" else ckpt
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
    """``-e --resume PATH`` and ``--resume-weights PATH``: the weights of any checkpoint or state
    dict into ``model``."""
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
          "train_start": "--train-start", "method": "the script",
          "resumed_from_weights": "--resume-weights", "sample_every_steps": "--sample-every-steps",
          "sample_rule": "--sample-rule"}


def check_same_run(path, ckpt, identity, epochs=None, flag="--resume"):
    """--resume continues the run that wrote ``ckpt`` or refuses: every entry of ``identity``
    (what defines the run: data, samples and their fingerprint, basis, start, the method's
    settings) must equal the checkpoint's record, and --epochs must reach its epoch. A
    checkpoint of the authors' scripts records nothing to compare; one of an older version of
    these scripts is noted. A run started with --resume-weights continues without it: the
    checkpoint's record of those weights joins ``identity``."""
    if not (isinstance(ckpt, dict) and "model" in ckpt):
        return
    recorded = ckpt.get("run")
    if isinstance(recorded, dict) and "resumed_from_weights" not in identity \
            and "resumed_from_weights" in recorded:
        identity["resumed_from_weights"] = recorded["resumed_from_weights"]
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
            again = ("resume with the settings it was started with, or start a new run "
                     "without --resume (another --save-dir or --output-tag)" if flag == "--resume"
                     else "run with the settings it was made with, pass --overwrite to replace "
                     "it, or use another --save-dir or --output-tag")
            raise UsageError(f"{flag}: {path} holds another run ({'; '.join(said)}); {again}")
    done, inside = int(ckpt.get("epoch", 0)), int(ckpt.get("batch", 0))
    if epochs is not None and (epochs < done or (inside and epochs == done)):
        held = f"{done} epochs" + (f" and {inside} batches of the next" if inside else "")
        least = done + (1 if inside else 0)
        raise UsageError(f"--epochs {epochs}: {path} already holds {held}; use --epochs "
                         f">= {least} to continue it" + ("" if flag == "--resume" else
                                                         ", or --overwrite to replace it"))


def load_resume(resume, save_dir, name, authors=False):
    """--resume: (path, the checkpoint read from it) of the checkpoint to continue: one of these
    scripts' (check_same_run then says whether it is this run's), or with ``authors`` (train_sgd.py,
    whose trajectory theirs continues) the authors' checkpoint_refine_E.th. Anything else (a
    sample, a final model) is refused, naming what it is: --resume-weights starts from it."""
    path = find_resume_checkpoint(resume, save_dir, name)
    ckpt = safe_load(path)
    kind = checkpoint_kind(ckpt)
    if kind == "run" or (kind == "authors" and authors and _is_sample_of(ckpt, path, save_dir)):
        return path, ckpt
    instead = (f"; to start a new run from its weights, use --resume-weights {path}"
               if kind is not None else "")
    raise UsageError(f"--resume: {path} holds {describe_file(ckpt, path)}, not a checkpoint of "
                     f"this script to continue ({name}){instead}")


def _is_sample_of(ckpt, path, save_dir):
    """An authors' checkpoint records no run, but their train_sgd.py saved the same weights as
    the sample of its epoch: it continues this folder's trajectory when it equals that sample.
    Otherwise UsageError: it cannot be verified as this run's, or belongs to another."""
    epoch = ckpt.get("epoch")
    sample = os.path.join(save_dir, f"{epoch}.pt")
    if not isinstance(epoch, int) or not os.path.isfile(sample):
        raise UsageError(f"--resume: {path} is a checkpoint of the authors' scripts (epoch "
                         f"{epoch}) without the sample {epoch}.pt in {save_dir} to check it "
                         f"against, so it cannot be verified as this run's; to start a new run "
                         f"from its weights, use --resume-weights {path}")
    weights, saved = checkpoint_weights(ckpt, path), checkpoint_weights(safe_load(sample), sample)
    if weights.keys() != saved.keys() or not all(torch.equal(weights[k], saved[k])
                                                 for k in weights):
        raise UsageError(f"--resume: {path} is a checkpoint of the authors' scripts whose weights "
                         f"are not those of sample {epoch}.pt in {save_dir}: another run's; to "
                         f"start a new run from its weights, use --resume-weights {path}")
    return True


def load_start_weights(path):
    """--resume-weights PATH: (path, the model state dict in it), read before anything is
    written; any checkpoint or state dict."""
    if not os.path.isfile(path):
        raise UsageError(f"--resume-weights: no file at {path}")
    return path, checkpoint_weights(safe_load(path), f"--resume-weights {path}")


def resume_run(path, ckpt, model, stateful, train_loader, results):
    """Restore what ``checkpoint_state`` saved in ``ckpt`` (read from ``path``); returns (epochs
    done, best Prec@1, batches done of the next epoch, this process's meters of it or None).

    A checkpoint of the authors' scripts (checkpoint_refine_E.th) holds the weights, the epoch and
    the best Prec@1 only: those are restored and the schedule stepped to the epoch; the optimizer,
    the data order and the random generators start afresh, as in the authors' --resume.
    """
    if checkpoint_kind(ckpt) == "authors":  # load_resume let it through: train_sgd.py's
        load_strictly(model, checkpoint_weights(ckpt, path), path)
        epoch = int(ckpt.get("epoch", 0))
        if "scheduler" in stateful:
            fast_forward(stateful["scheduler"], epoch)
        print(f"=> resumed from {path} after epoch {epoch}: a checkpoint without optimizer, data "
              "order or random state (the authors' format), which start afresh", flush=True)
        return epoch, float(ckpt.get("best_prec1", 0.0)), 0, None
    load_strictly(model, ckpt["model"], path)
    for name, obj in stateful.items():
        if name not in ckpt and getattr(obj, "optional", False):
            continue  # (a state added since that checkpoint was written; the caller falls back)
        try:
            obj.load_state_dict(ckpt[name])
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{path}: its {name} state does not fit this run ({e}); it was "
                             "written by another script or version")
    train_loader.generator.set_state(ckpt["loader_rng"])
    if hasattr(train_loader, "epoch"):  # a DistributedSampler's order depends on the epoch
        train_loader.epoch = ckpt.get("loader_epoch", ckpt["epoch"])
    set_rng_state(ckpt["rng"], model)
    results.data["epochs"] = ckpt["results"]
    if ckpt.get("results_start") is not None:
        results.data["start"] = ckpt["results_start"]
    if "samples" in ckpt:
        results.data["samples"] = ckpt["samples"]
    batch, progress = int(ckpt.get("batch", 0)), None
    if batch:  # inside an epoch: its first ``batch`` batches are passed over, its meters restored
        train_loader.skip = batch
        progress = ckpt["progress"][world()[0]]
    where = (f"after epoch {ckpt['epoch']}" if not batch else
             f"inside epoch {ckpt['epoch']}, after its batch {batch - 1}")
    print(f"=> resumed from {path} {where}", flush=True)
    return ckpt["epoch"], ckpt["best_prec1"], batch, progress


def saved_at(epoch, batch=0):
    """Where a checkpoint holds the run: after ``epoch`` epochs and ``batch`` batches more."""
    return f"after {epoch} epochs" + (f" and {batch} batches of the next" if batch else "")


class RunState:
    """Where a run stands, for the line it prints when a signal or a failed write stops it: the
    epoch under way and where its checkpoint holds it (``saved``, None: nothing to resume yet)."""

    def __init__(self, checkpoint_path):
        self.checkpoint_path = checkpoint_path
        self.epoch = self.saved = None
        self.trained = False  # the epochs are done: what remains is the final evaluation and writes

    def save(self, ckpt):
        """Write the checkpoint ``ckpt`` (``checkpoint_state``'s) and note where it holds the run;
        a signal that arrived during the write takes effect once the file is whole."""
        try:
            atomic_torch_save(ckpt, self.checkpoint_path)
        except Interrupted as e:
            if e.after_write:
                self.saved = saved_at(ckpt["epoch"], ckpt.get("batch", 0))
            raise
        self.saved = saved_at(ckpt["epoch"], ckpt.get("batch", 0))

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
                           f"{self.saved}")
                e.resumable = True
            raise
