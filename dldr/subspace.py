"""What the two subspace scripts share: which samples, the checks before anything is loaded, the
samples and their basis, and the names of a run's output files."""
import os

import numpy as np
import torch

from .basis import streaming_subspace_basis, subspace_basis
from .checkpoints import find_resume_checkpoint
from .cli import UsageError
from .data import check_dataset_name
from .networks import check_arch_name
from .optim import trainable_parameters
from .records import NOISE_RECORD, check_provenance
from .progress import log
from .samples import check_sample_range, load_sample_matrix, sample_path

STREAMING_BASIS_BYTES = 2 << 30  # float32 sample matrices above this use the streaming basis


def sample_epochs(params_start, params_end, params_step=1):
    """The samples that build the basis: params_start, params_start+params_step, ... < params_end."""
    return list(range(params_start, params_end, params_step))


def describe_sample_epochs(epochs, params_step=1):
    """'0..80', or '0..80 step 2' when --params_step skips samples."""
    text = f"{epochs[0]}..{epochs[-1]}"
    return text if params_step == 1 else f"{text} step {params_step}"


def output_names(method, basis="dldr", tag=None):
    """(results file, final model file, checkpoint file, lock name) of a subspace run in the save
    dir: all of them carry the method, the basis and the tag, so runs differing in any share it."""
    model = method.upper() + ("" if basis == "dldr" else "_random")
    stem = method + ("" if basis == "dldr" else "_random") + (f"_{tag}" if tag else "")
    suffix = f"_{tag}" if tag else ""
    return f"results_{stem}.json", f"{model}{suffix}.pt", f"checkpoint_{stem}.pt", stem


def check_subspace_run(save_dir, *, arch, datasets, data_root, corrupt, smalldatasets, randomseed,
                       params_start, params_end, params_step, n_components, basis, resume,
                       checkpoint_name):
    """Every check of a subspace run that needs no heavy work, before anything is loaded or written."""
    check_arch_name(arch, datasets)
    check_dataset_name(datasets, data_root)
    if params_start >= params_end:
        raise UsageError(f"--params_start {params_start} must be smaller than "
                         f"--params_end {params_end}")
    epochs = sample_epochs(params_start, params_end, params_step)
    check_sample_range(save_dir, epochs, params_end)
    if basis == "dldr" and n_components >= len(epochs):
        n = len(epochs)
        raise UsageError(f"--n_components {n_components}: {n} samples "
                         f"({describe_sample_epochs(epochs, params_step)}) span at most {n - 1} "
                         f"directions; use --n_components <= {n - 1} or a wider sample range"
                         + (" or a smaller --params_step" if params_step > 1 else ""))
    if resume:
        find_resume_checkpoint(resume, save_dir, checkpoint_name)
    check_provenance(save_dir, arch=arch, datasets=datasets, corrupt=corrupt,
                     smalldatasets=smalldatasets, randomseed=randomseed)
    if not os.access(save_dir, os.W_OK):
        raise UsageError(f"--save-dir {save_dir}: not writable; choose another folder")


class SampleFiles:
    """Sample files too large to hold together in memory: the streaming basis reads them in blocks."""

    def __init__(self, paths, model, arch):
        self.paths, self.model, self.arch = paths, model, arch

    def __len__(self):
        return len(self.paths)


def load_samples(save_dir, epochs, model, arch, streaming=False):
    """The trajectory's samples ``epochs`` of ``model``'s parameters: an (n, D) float32 matrix, or,
    when that would exceed STREAMING_BASIS_BYTES (or with ``streaming``), SampleFiles read block
    by block by ``trajectory_basis``, so host memory holds the basis plus ~1 GiB."""
    dim = sum(p.numel() for p in trainable_parameters(model))
    if streaming or len(epochs) * dim * 4 > STREAMING_BASIS_BYTES:
        return SampleFiles([sample_path(save_dir, e) for e in epochs], model, arch)
    return load_sample_matrix(save_dir, model, epochs, arch)


def trajectory_basis(samples, n_components, device):
    """The DLDR basis (k, D) of ``load_samples``' result, built on ``device`` for a matrix, on the
    host for SampleFiles; returns (basis, explained variance ratios as a list)."""
    if isinstance(samples, SampleFiles):
        # float32 unless the parameters are float64 (--dtype float64): the training's dtype
        wide = trainable_parameters(samples.model)[0].dtype == torch.float64
        basis, ratios = streaming_subspace_basis(samples.paths, samples.model, n_components,
                                                 arch=samples.arch,
                                                 dtype=torch.float64 if wide else torch.float32)
    else:
        basis, ratios = subspace_basis(samples.to(device), n_components)
    return basis, ratios.tolist()


def log_basis(basis_shape, ratios, epochs, params_start, params_end, params_step, seconds,
              streamed):
    """The authors' lines about the basis (``params:``, ``W:``, ``ratio:``, ``P:``, formatted as
    their print of numpy values), then this project's summary line."""
    k, dim = basis_shape
    log(f"params: from {params_start} to {params_end}")
    log(f"W: {(len(epochs), dim)}")
    log(f"ratio: {np.asarray(ratios)}")
    log(f"P: {(k, dim)}")
    log(f"=> DLDR basis{' (streaming)' if streamed else ''}: {k} directions from {len(epochs)} "
        f"samples {describe_sample_epochs(epochs, params_step)} in {seconds:.2f} s; explained "
        f"variance {sum(ratios):.4f} (top 5: {', '.join(f'{r:.4f}' for r in ratios[:5])})")


def note_unchecked_noise(save_dir, corrupt):
    """Samples without a noise record (the authors' scripts kept theirs in a pickle of their own)
    cannot show which labels they were trained with: say so, and how these are drawn."""
    if corrupt > 0 and not os.path.exists(os.path.join(save_dir, NOISE_RECORD)):
        log(f"=> --corrupt {corrupt}: {save_dir} has no {NOISE_RECORD} (samples of the authors' "
            "scripts?), so these noisy labels cannot be checked against the trajectory's; they are "
            f"drawn from --randomseed: round({corrupt} N) positions chosen at random, new labels "
            "uniform over all classes")
