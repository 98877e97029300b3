"""DLDR as a library: the pieces behind the scripts, one concern a file (utils.py's docstring maps
them). What a training loop of your own needs is importable from here::

    import dldr
    dldr.save_sample(model, folder, epoch)                      # sample the trajectory
    samples = dldr.load_sample_matrix(folder, model, range(n), "resnet20")
    basis, ratios = dldr.subspace_basis(samples, k)             # DLDR's (k, D) basis
    opt = dldr.PBFGS(model.parameters(), basis.float(), buffers=model.buffers())
    dldr.project_gradients_(model.parameters(), basis.float())  # or P-SGD, after backward()
"""
from .basis import (random_basis, span_basis, streaming_span_basis, streaming_subspace_basis,
                    subspace_basis)
from .batches import MemoryLoader
from .batchnorm import reestimate_bn
from .data import load_digits
from .optim import PBFGS, FlatParameters, NonFiniteError, project_gradients_
from .samples import load_sample_into, load_sample_matrix, load_state, save_sample
from .trajectory import Trajectory, build_basis

__all__ = ["MemoryLoader", "NonFiniteError", "PBFGS", "FlatParameters", "Trajectory",
           "build_basis", "load_digits", "load_sample_into", "load_sample_matrix", "load_state",
           "project_gradients_", "random_basis", "reestimate_bn", "save_sample", "span_basis",
           "streaming_span_basis", "streaming_subspace_basis", "subspace_basis"]
