"""The report's null for its first claim: how much of the variance a trajectory's top directions
would hold if it were a random walk with its own step lengths."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dldr.samples import load_state, sample_path  # noqa: E402

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # not parameters


def top_share(gram, top):
    """The share of the variance of the points whose Gram matrix is ``gram`` held by their
    ``top`` principal directions, after centring (what the DLDR basis's ratios sum to)."""
    n = gram.shape[0]
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    values = torch.linalg.eigvalsh(centre @ gram @ centre).flip(0).clamp_min(0)
    return (values[:top].sum() / values.sum()).item()


def walk_null(save_dir, start, end, top=5):
    """(the trajectory's top-``top`` share, the null's) over samples start..end-1 of ``save_dir``
    (their parameters, BatchNorm buffers left out), in %. The null is a walk whose steps have the
    trajectory's own lengths in mutually orthogonal directions, as random directions in D >> n
    dimensions nearly are: its Gram matrix is L diag(s^2) L^T, L the lower-triangular ones."""
    vectors = []
    for epoch in range(start, end):
        state = load_state(sample_path(save_dir, epoch))
        vectors.append(torch.cat([v.reshape(-1).double() for k, v in state.items()
                                  if v.is_floating_point() and not k.endswith(BUFFERS)]))
    samples = torch.stack(vectors)
    samples -= samples.mean(0)  # (centred first: the Gram of the raw vectors loses digits)
    steps = (samples[1:] - samples[:-1]).norm(dim=1)
    n = len(vectors)
    walk = torch.tril(torch.ones(n, n - 1, dtype=torch.float64), diagonal=-1) * steps
    return (100 * top_share(samples @ samples.T, top), 100 * top_share(walk @ walk.T, top))
