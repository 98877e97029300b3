"""What a run records beside its samples: provenance (run.json), the label-noise record
(noisy_labels.json) and the per-epoch results (results_*.json)."""
import datetime
import functools
import json
import os
import platform
import subprocess

import numpy as np
import torch

from .cli import UsageError
from .distributed import world
from .files import atomic_write_json

NOISE_RECORD = "noisy_labels.json"


@functools.lru_cache(maxsize=None)  # asked by run.json and every results file: two git calls once
def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(arguments, num_classes):
    """run.json: the command line's ``arguments`` (a dict), the data, versions and code."""
    import torchvision
    return {
        "args": arguments, "arch": arguments["arch"], "datasets": arguments["datasets"],
        "corrupt": arguments["corrupt"], "randomseed": arguments["randomseed"],
        "smalldatasets": arguments["smalldatasets"], "num_classes": num_classes,
        "processes": world()[1],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "git_commit": git_commit(), "host": platform.node(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def check_provenance(save_dir, *, arch, datasets, corrupt, smalldatasets, randomseed):
    """The subspace scripts must use the samples' arch, dataset and label noise; returns run.json's
    record, or None for samples written by the authors' scripts, which keep none."""
    path = os.path.join(save_dir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    ours = {"arch": arch, "datasets": datasets, "corrupt": corrupt, "smalldatasets": smalldatasets}
    for key, value in ours.items():
        if record.get(key) != value:
            raise UsageError(f"--{key} {value} differs from the samples in {save_dir}, which "
                             f"were made with --{key} {record.get(key)}")
    if corrupt > 0 and record.get("randomseed") != randomseed:
        raise UsageError(f"--randomseed {randomseed} differs from the samples' "
                         f"{record.get('randomseed')}: the noisy labels would differ")
    return record


def save_noise_record(save_dir, noise):
    atomic_write_json(os.path.join(save_dir, NOISE_RECORD), noise)


def check_noise_record(save_dir, noise):
    """The noisy labels of a subspace run must be those of its samples, when they left a record."""
    path = os.path.join(save_dir, NOISE_RECORD)
    if noise is None or not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if saved["indices"] != noise["indices"] or saved["labels"] != noise["labels"]:
        raise UsageError(f"{path}: the noisy labels of the samples differ from these; "
                         "use the same --corrupt, --randomseed and --smalldatasets")


class Results:
    """Per-epoch records of a run, rewritten atomically as JSON after every epoch."""

    def __init__(self, path, method, arguments, extra=None):
        self.path = path
        # The code and torch that made the numbers: floating-point rounding differs between them
        self.data = {"method": method, "args": arguments, "git_commit": git_commit(),
                     "torch": torch.__version__, "epochs": []}
        self.data.update(extra or {})

    def add(self, save=True, **row):
        self.data["epochs"].append(row)
        if save:
            self.save()

    def save(self):
        atomic_write_json(self.path, self.data)
