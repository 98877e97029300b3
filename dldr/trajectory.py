"""The trajectory as the subspace runs use it: which samples (``Trajectory``), their mean, and the
basis built from them (DLDR's, TWA's span, or the random control) in one call (``build_basis``),
with what is logged about it, saved to and reused from a basis file."""
import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .basis import (random_basis, span_basis, streaming_span_basis, streaming_subspace_basis,
                    subspace_basis)
from .checkpoints import load_strictly
from .cli import UsageError
from .files import Unreadable, atomic_torch_save, check_output_file, safe_load
from .optim import trainable_parameters
from .progress import log
from .records import samples_fingerprint
from .sampling import describe_steps, sample_steps
from .samples import (check_sample_range, check_state_matches, load_sample_matrix, load_state,
                      sample_path)

STREAMING_BASIS_BYTES = 2 << 30  # float32 sample matrices above this use the streaming basis


def describe_sample_epochs(epochs, params_step=1):
    """'0..80', or '0..80 step 2' when --params_step skips samples."""
    text = f"{epochs[0]}..{epochs[-1]}"
    return text if params_step == 1 else f"{text} step {params_step}"


class Trajectory:
    """Samples ``start``, ``start + step``, ... before ``end`` of the SGD run in ``save_dir``,
    as parameter vectors of an ``arch`` model (named in errors)."""

    def __init__(self, save_dir, start, end, step=1, arch=None):
        if start >= end:
            raise UsageError(f"--params_start {start} must be smaller than --params_end {end}")
        self.save_dir, self.start, self.end, self.step, self.arch = save_dir, start, end, step, arch
        # A range, not a list, until the folder is checked: --params_end 10000000 is a typo to
        # answer at once, not ten million numbers to hold
        self.range = range(start, end, step)
        self._epochs = self._fingerprint = None
        self.steps = sample_steps(save_dir)  # {sample: global step} when sampled by step

    @property
    def epochs(self):
        """The sample numbers as a list, once the folder is known to hold them all."""
        if self._epochs is None:
            self.check_present()
            self._epochs = list(self.range)
        return self._epochs

    @property
    def paths(self):
        return [sample_path(self.save_dir, e) for e in self.epochs]

    def __len__(self):
        return len(self.range)

    def describe(self):
        """'0..80', with the global steps of samples taken by step: '0..50 (steps 0..50000)'."""
        return describe_sample_epochs(self.range, self.step) + describe_steps(
            self.steps, [self.range[0], self.range[-1]] if len(self.range) else [])

    def check_present(self):
        """Every sample exists; the error names the first missing one and those present."""
        check_sample_range(self.save_dir, self.range, self.end)

    def streams(self, model, streaming=False):
        """Whether the basis is built from the files block by block: asked for, or the samples
        would take more than STREAMING_BASIS_BYTES as a float32 matrix."""
        dim = sum(p.numel() for p in trainable_parameters(model))
        return streaming or len(self) * dim * 4 > STREAMING_BASIS_BYTES

    def matrix(self, model):
        """The (n, D) float32 matrix of the samples' trainable parameters."""
        return load_sample_matrix(self.save_dir, model, self.epochs, self.arch)

    def mean_state(self, model):
        """The samples' mean as a state dict of ``model``: every floating-point entry (parameters
        and BatchNorm statistics) averaged in float64, then in the model's dtype; the integer
        entries (``num_batches_tracked``) of the last sample. Exact, unlike a running average
        (torch.optim.swa_utils.AveragedModel's rounds at every sample)."""
        own, total = model.state_dict(), None
        for path in self.paths:
            state = load_state(path, mmap=True)
            check_state_matches(state, model, path, self.arch)
            if total is None:
                total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in own.items()
                         if v.is_floating_point()}
            for name in total:
                total[name] += state[name].double()
            last = {k: state[k].clone() for k in own if k not in total}
        mean = {k: (v / len(self)).to(own[k].dtype) for k, v in total.items()}
        return {k: mean[k] if k in mean else last[k] for k in own}

    def load_mean_into(self, model):
        """``model`` set to the samples' mean (``mean_state``)."""
        load_strictly(model, self.mean_state(model), f"the mean of samples {self.describe()}")
        return model

    def fingerprint(self):
        """SHA-256 over the samples' numbers and contents: changes whenever a sample does."""
        if self._fingerprint is None:
            self._fingerprint = samples_fingerprint(self.save_dir, self.epochs)
        return self._fingerprint


@dataclass
class Basis:
    """A subspace basis: the (k, D) ``matrix`` with orthonormal rows, its ``kind`` (dldr, span
    or random), the explained variance ratios (dldr), the samples it came from, how it was
    built."""
    matrix: torch.Tensor
    kind: str
    ratios: list
    trajectory: Trajectory
    streamed: bool
    seconds: float
    seed: int = None
    file_note: str = None  # what --basis-file did, said after the authors' lines

    def __post_init__(self):
        self.size = len(self.matrix)  # kept for the record once the matrix is let go

    def log(self):
        """The authors' lines (``params:``, ``W:``, ``ratio:``, ``P:``, formatted as their print
        of numpy values), then this project's summary line."""
        self._log_lines()
        if self.file_note:
            log(self.file_note)

    def _log_lines(self):
        k, dim = self.matrix.shape
        if self.kind == "random":
            log(f"P: {(k, dim)}")
            log(f"=> random basis: {k} orthonormal directions (seed {self.seed})")
            return
        samples = self.trajectory
        log(f"params: from {samples.start} to {samples.end}")
        log(f"W: {(len(samples), dim)}")
        if self.kind == "span":
            log(f"P: {(k, dim)}")
            log(f"=> span basis{' (streaming)' if self.streamed else ''}: {k} orthonormal "
                f"directions spanning the {len(samples)} samples {samples.describe()} (QR) in "
                f"{self.seconds:.2f} s")
            return
        log(f"ratio: {np.asarray(self.ratios)}")
        log(f"P: {(k, dim)}")
        log(f"=> DLDR basis{' (streaming)' if self.streamed else ''}: {k} directions from "
            f"{len(samples)} samples {samples.describe()} in {self.seconds:.2f} s; explained "
            f"variance {sum(self.ratios):.4f} ({'top 5' if k > 5 else f'the {k}'}: "
            f"{', '.join(f'{r:.4f}' for r in self.ratios[:5])})")

    def record(self):
        """What the results file keeps of the basis: its kind and size (the span's: one direction
        per sample, whatever --n_components says)."""
        return {"explained_variance_ratio": self.ratios, "basis": self.kind,
                "n_components": self.size}


def check_basis_file(path, evaluating=False):
    """--basis-file PATH before any data is loaded: not a folder, in a folder that exists and
    (unless -e, which never writes it) can be written."""
    if not path:
        return
    check_output_file(path, "--basis-file", writes=not evaluating)  # -e never writes it
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise UsageError(f"--basis-file {path}: not readable; give another path")


def matrix_checksum(matrix):
    """SHA-256 of the matrix's bytes (its dtype and shape are recorded beside it)."""
    data = matrix.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data).hexdigest()


@torch.no_grad()
def orthonormality_error(matrix, device):
    """max |P P^T - I| of the (k, D) ``matrix``, in float64 over blocks of columns on ``device``
    (nan for non-finite entries)."""
    k, dim = matrix.shape
    block = max(1, (1 << 22) // k)
    gram = torch.zeros(k, k, dtype=torch.float64, device=device)
    for start in range(0, dim, block):
        columns = matrix[:, start:start + block].to(device=device, dtype=torch.float64)
        gram += columns @ columns.T
    return (gram - torch.eye(k, dtype=torch.float64, device=device)).abs().max().item()


# The largest |P P^T - I| a saved basis may show: its builders reach 1e-12 (float64), 1e-6
# (float32, streamed); more is damage, not rounding (the optimizers allow as much)
SAVED_TOLERANCE = {"float64": 1e-8, "float32": 1e-4}


def build_basis(kind, trajectory, n_components, model, device, *, seed=None, streaming=False,
                basis_file=None, save=True):
    """The basis of a subspace run: ``kind`` "dldr" (the top ``n_components`` principal
    directions of the trajectory's samples), "span" (an orthonormal basis of the raw samples'
    span, one direction per sample) or "random" (an orthonormal random basis of ``n_components``
    directions, from ``seed``). DLDR and span bases are built on ``device``, or from the files
    block by block when ``trajectory.streams``. With ``basis_file``: read from that file when
    what it records matches (kind, samples and their fingerprint, size, seed) and its matrix is
    whole (its checksum) and orthonormal, else built and, with ``save`` (not under -e), saved
    there; one ``=> `` line says which. Returns a Basis."""
    record = _basis_record(kind, trajectory, n_components, model, seed, streaming)
    note = None
    if basis_file:
        saved, note = _read_basis_file(basis_file, record, trajectory, device)
        if saved is not None:
            return saved
    start = time.time()
    if kind == "random":
        matrix, ratios, streamed = random_basis(record["dim"], n_components, seed), None, False
    elif trajectory.streams(model, streaming):
        # float32 unless the parameters are float64 (--dtype float64): the training's dtype
        wide = trainable_parameters(model)[0].dtype == torch.float64
        dtype, streamed = (torch.float64 if wide else torch.float32), True
        if kind == "span":
            matrix, ratios = streaming_span_basis(trajectory.paths, model, arch=trajectory.arch,
                                                  dtype=dtype), None
        else:
            matrix, ratios = streaming_subspace_basis(trajectory.paths, model, n_components,
                                                      arch=trajectory.arch, dtype=dtype)
    else:
        samples, streamed = trajectory.matrix(model).to(device), False
        if kind == "span":
            matrix, ratios = span_basis(samples), None
        else:
            matrix, ratios = subspace_basis(samples, n_components)
        del samples
    basis = Basis(matrix, kind, None if ratios is None else ratios.tolist(), trajectory, streamed,
                  time.time() - start, seed)
    if basis_file and save:
        matrix = matrix.cpu()
        atomic_torch_save({**record, "matrix": matrix, "ratios": basis.ratios,
                           "checksum": matrix_checksum(matrix)}, basis_file)
        basis.file_note = f"{note}; built in {basis.seconds:.2f} s and saved there"
    elif basis_file:
        basis.file_note = f"{note}; built in {basis.seconds:.2f} s, not saved (-e writes nothing)"
    return basis


def _basis_record(kind, trajectory, n_components, model, seed, streaming):
    """What a basis file records about its basis, all of which a run must match to reuse it
    (``dtype``: the precision this run would build it in, so a float32 streamed basis is not
    taken for the float64 one of an in-memory or --dtype float64 run)."""
    params = trainable_parameters(model)
    dim = sum(p.numel() for p in params)
    if kind == "random":
        if n_components > dim:
            raise UsageError(f"--n_components {n_components}: the model has only {dim} "
                             "parameters")
        return {"format": "dldr-basis-1", "kind": kind, "dim": dim, "n_components": n_components,
                "seed": seed, "dtype": "float64"}
    narrow = trajectory.streams(model, streaming) and params[0].dtype != torch.float64
    return {"format": "dldr-basis-1", "kind": kind, "dim": dim,
            "n_components": len(trajectory) if kind == "span" else n_components,
            "epochs": trajectory.epochs, "samples": trajectory.fingerprint(),
            "dtype": "float32" if narrow else "float64"}


def _read_basis_file(path, record, trajectory, device):
    """(the Basis of ``path``, its note) when its record equals ``record`` and its matrix is the
    one saved (shape, dtype, checksum) and orthonormal, else (None, why)."""
    if not os.path.exists(path):
        return None, f"=> --basis-file {path}: not there yet"
    start = time.time()
    try:
        saved = safe_load(path, mmap=True)
    except Unreadable as e:  # a torch file cut short (a full disk, a copy stopped): made again
        return None, f"=> --basis-file {path}: damaged ({str(e).split(': ', 1)[1]}), so rebuilt"
    if not (isinstance(saved, dict) and saved.get("format") == record["format"]
            and torch.is_tensor(saved.get("matrix"))):
        raise UsageError(f"--basis-file {path}: not a basis file of these scripts; give another "
                         "path (it would be overwritten)")
    differ = [k for k in record if saved.get(k) != record[k]]
    if differ:
        what = ("the samples changed" if "samples" in differ
                else f"{', '.join(differ)} differ")
        return None, f"=> --basis-file {path}: made for another basis ({what})"
    damage = _damage(saved, record, device)
    if damage:
        return None, f"=> --basis-file {path}: damaged ({damage}), so rebuilt"
    basis = Basis(saved["matrix"], record["kind"], saved["ratios"], trajectory, False,
                  time.time() - start, record.get("seed"))
    of = "" if record["kind"] == "random" else f" of samples {trajectory.describe()}, unchanged"
    basis.file_note = (f"=> --basis-file {path}: loaded in {basis.seconds:.2f} s; it matches this "
                       f"run ({record['kind']} basis{of}, {record['n_components']} directions)")
    return basis, None


def _damage(saved, record, device):
    """What is wrong with the matrix of a basis file whose record matches, or None."""
    matrix = saved["matrix"]
    shape = (record["n_components"], record["dim"])
    if tuple(matrix.shape) != shape or str(matrix.dtype) != f"torch.{record['dtype']}":
        return (f"its matrix is {tuple(matrix.shape)} {matrix.dtype}, its record says {shape} "
                f"torch.{record['dtype']}")
    if not isinstance(saved.get("checksum"), str):
        return "it records no checksum of its matrix (written by an older version)"
    if matrix_checksum(matrix) != saved["checksum"]:
        return "its matrix does not match its checksum"
    error = orthonormality_error(matrix, device)
    if not error <= SAVED_TOLERANCE[record["dtype"]]:
        return f"its rows are not orthonormal: max |P P^T - I| = {error:.3g}"
    return None
