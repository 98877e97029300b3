"""What a run records beside its samples: provenance (run.json), the label-noise record
(noisy_labels.json) and the per-epoch results (results_*.json)."""
import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess

import numpy as np
import torch

from .cli import UsageError
from .distributed import world
from .files import atomic_write_json
from .kernels import kernel_set

NOISE_RECORD = "noisy_labels.json"


@functools.lru_cache(maxsize=None)  # asked by run.json and every results file: two git calls once
def git_commit():
    return commit_of(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def commit_of(project):
    """The git commit of the code in ``project`` (the folder holding dldr/), "-dirty" when it has
    uncommitted changes; None when ``project`` is not the top level of its own repository (an
    installed copy inside another repository would otherwise take that repository's commit)."""
    git = lambda *a: subprocess.run(["git", "-C", project, *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=5).stdout.strip()
    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or os.path.realpath(top) != os.path.realpath(project):
            return None
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit + ("-dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def samples_fingerprint(save_dir, epochs, digests=None):
    """SHA-256 over the sample files ``E.pt`` of ``epochs`` in ``save_dir``, their numbers and
    contents (trajectory.Trajectory.fingerprint's, for any list of epochs); ``digests`` (a dict)
    caches each file's own digest across calls. Raises OSError for a missing sample."""
    total = hashlib.sha256()
    for epoch in epochs:
        path = os.path.join(save_dir, f"{epoch}.pt")
        if digests is None or path not in digests:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
            if digests is None:
                digests = {}
            digests[path] = digest.digest()
        total.update(f"{epoch}:".encode())
        total.update(digests[path])
    return total.hexdigest()


def stale_reason(save_dir, record, digests=None):
    """Why a results file's ``sample_fingerprint`` record (the samples it was made from) does not
    match the samples now in ``save_dir``, or None when it does (or records none: older files)."""
    if not isinstance(record, dict) or "epochs" not in record:
        return None
    epochs = record["epochs"]
    try:
        if samples_fingerprint(save_dir, epochs, digests) == record.get("sha256"):
            return None
    except OSError:
        return f"its samples {epochs[0]}..{epochs[-1]} are no longer all in {save_dir}"
    return f"made from other samples {epochs[0]}..{epochs[-1]} than those now in {save_dir}"


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
        "git_commit": git_commit(), "host": platform.node(), "kernels": kernel_set(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def read_record(path, holds):
    """A JSON record beside the samples (run.json, the noise record), or a UsageError naming it
    when it is damaged: it ``holds`` what the subspace runs must match, so it is not guessed."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        record = e
    if not isinstance(record, dict):
        raise UsageError(f"{path}: damaged ({type(record).__name__}); it records {holds}: restore "
                         "it, or make the samples again with train_sgd.py --overwrite")
    return record


def check_provenance(save_dir, *, arch, datasets, corrupt, smalldatasets, randomseed):
    """The subspace scripts must use the samples' arch, dataset and label noise; returns run.json's
    record, or None for samples written by the authors' scripts, which keep none."""
    path = os.path.join(save_dir, "run.json")
    if not os.path.exists(path):
        return None
    record = read_record(path, "how the samples were made")
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
    saved = read_record(path, "the samples' noisy labels")
    if saved.get("indices") != noise["indices"] or saved.get("labels") != noise["labels"]:
        raise UsageError(f"{path}: the noisy labels of the samples differ from these; "
                         "use the same --corrupt, --randomseed and --smalldatasets")


class Results:
    """Per-epoch records of a run, rewritten atomically as JSON after every epoch."""

    def __init__(self, path, method, arguments, extra=None):
        self.path = path
        # The code, torch and CPU kernels that made the numbers: rounding differs between them
        self.data = {"method": method, "args": arguments, "git_commit": git_commit(),
                     "torch": torch.__version__, "kernels": kernel_set(), "epochs": []}
        self.data.update(extra or {})

    def add(self, save=True, **row):
        self.data["epochs"].append(row)
        if save:
            self.save()

    def save(self):
        atomic_write_json(self.path, self.data)
