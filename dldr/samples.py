"""Trajectory samples: the model's state dict before training (0.pt) and after each epoch (E.pt),
read back as flat parameter vectors in ``named_parameters()`` order (no BatchNorm buffers)."""
import os

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .cli import UsageError
from .files import atomic_torch_save, safe_load


def sample_path(save_dir, epoch):
    return os.path.join(save_dir, f"{epoch}.pt")


def available_samples(save_dir):
    """Sorted epochs E of the files ``E.pt`` in save_dir."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(int(name[:-3]) for name in os.listdir(save_dir)
                  if name.endswith(".pt") and name[:-3].isdigit())


def describe_epochs(epochs):
    """'0..80' style summary of a sorted list of ints."""
    if not epochs:
        return "none"
    runs, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        runs.append(f"{start}" if start == prev else f"{start}..{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(runs)


def save_model(model, path):
    """The model's state dict, on the CPU, written atomically (samples and final models alike)."""
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def save_sample(model, save_dir, epoch):
    save_model(model, sample_path(save_dir, epoch))


def load_state(path, mmap=False):
    """A model state dict from ``path``; keys saved from nn.DataParallel ('module.') are stripped."""
    state = safe_load(path, mmap=mmap)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: not a model state dict")
    if state and all(k.startswith("module.") for k in state):
        consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def name_list(names):
    """'a', 'b', 'c' and 4 more: the first three of ``names``, sorted, for one-line errors."""
    names = sorted(names)
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more"
                                                    if len(names) > 3 else "")


def check_state_matches(state, model, path, arch):
    """A state dict of another architecture, or one that lacks or adds entries (a sample saved
    without its BatchNorm statistics), is an error naming the file and what differs."""
    own = model.state_dict()
    for name, p in model.named_parameters():
        if name not in state:
            raise UsageError(f"{path}: no parameter {name!r}; the samples are not of --arch {arch}")
        if state[name].shape != p.shape:
            raise UsageError(f"{path}: parameter {name!r} has shape {tuple(state[name].shape)}, "
                             f"--arch {arch} expects {tuple(p.shape)}; the samples are of another "
                             "architecture or number of classes")
    extra = set(state) - set(own)
    if extra:
        raise UsageError(f"{path}: unexpected entries such as {sorted(extra)[0]!r}; the samples "
                         f"are not of --arch {arch}")
    missing = set(own) - set(state)
    if missing:
        raise UsageError(f"{path}: no {name_list(missing)} (buffers such as BatchNorm statistics); "
                         f"a sample holds the whole state dict of --arch {arch}, as "
                         "model.state_dict() gives it")
    for name, value in own.items():
        if state[name].shape != value.shape:
            raise UsageError(f"{path}: buffer {name!r} has shape {tuple(state[name].shape)}, "
                             f"--arch {arch} expects {tuple(value.shape)}")


def load_sample_into(model, path, arch):
    """The whole state dict of sample ``path`` (parameters and buffers) into ``model``."""
    state = load_state(path)
    check_state_matches(state, model, path, arch)
    model.load_state_dict(state)
    return model


def param_vector_from_state(state, model):
    """The float32 vector of ``model``'s trainable parameters as ``state`` holds them."""
    return torch.cat([state[name].reshape(-1).to(torch.float32)
                      for name, _ in model.named_parameters()])


def check_sample_range(save_dir, epochs, params_end):
    """Every sample of ``epochs`` (a range ending before ``params_end``, of any length) must exist;
    the error says which epochs do."""
    have = available_samples(save_dir)
    if not have:
        raise UsageError(f"--save-dir {save_dir}: no samples (0.pt, 1.pt, ...) found; run "
                         "train_sgd.py with this --save-dir first")
    present = set(have)
    # The first one missing: found within len(have) + 1 steps whatever the range's length
    missing = next((e for e in epochs if e not in present), None)
    if missing is not None:
        raise UsageError(f"--params_end {params_end}: sample {missing}.pt is missing from "
                         f"{save_dir}; samples present: {describe_epochs(have)}")


def load_sample_matrix(save_dir, model, epochs, arch):
    """(n, D) float32 matrix of the flattened parameters of the samples ``epochs``."""
    rows = []
    for e in epochs:
        path = sample_path(save_dir, e)
        state = load_state(path)
        check_state_matches(state, model, path, arch)
        rows.append(param_vector_from_state(state, model))
    return torch.stack(rows)
