"""The DLDR basis against scikit-learn's exact PCA, and the random control basis."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import utils


def trajectory(n=21, dim=3000, seed=0):
    """Samples along a curved low-dimensional path plus small noise, like an SGD trajectory."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(4, dim, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    path = torch.cat([t, t ** 2, torch.sin(3 * t), torch.exp(-t)], 1) @ directions
    return (path + 1e-3 * torch.randn(n, dim, generator=g, dtype=torch.float64)).float()


@pytest.mark.parametrize("k", [1, 5, 20])
def test_basis_spans_the_same_subspace_as_sklearn_full_pca(k):
    samples = trajectory()
    basis, ratios = utils.subspace_basis(samples, k)
    pca = PCA(n_components=k, svd_solver="full").fit(samples.double().numpy())
    ours = basis.numpy()
    assert ours.shape == (k, samples.shape[1])
    np.testing.assert_allclose(ours @ ours.T, np.eye(k), atol=1e-10)
    # Same subspace: the projectors agree.
    proj_ours, proj_ref = ours.T @ ours, pca.components_.T @ pca.components_
    assert np.abs(proj_ours - proj_ref).max() < 1e-6
    # The four structured directions (distinct eigenvalues) agree one by one, up to sign.
    top = min(k, 4)
    np.testing.assert_allclose(np.abs((ours[:top] * pca.components_[:top]).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(ratios.numpy(), pca.explained_variance_ratio_, rtol=1e-6)


def test_basis_in_column_blocks_equals_one_block():
    samples = trajectory(n=11, dim=5000)
    whole, r1 = utils.subspace_basis(samples, 6)
    blocked, r2 = utils.subspace_basis(samples, 6, block=777)
    assert torch.allclose(whole.T @ whole, blocked.T @ blocked, atol=1e-9)
    assert torch.allclose(whole[:4], blocked[:4], atol=1e-9)
    assert torch.allclose(r1, r2, rtol=1e-9)


def test_too_many_components_is_a_clear_error():
    samples = trajectory(n=5)
    utils.subspace_basis(samples, 4)  # n - 1 is allowed
    with pytest.raises(utils.UsageError, match="--n_components 5: 5 samples span at most 4"):
        utils.subspace_basis(samples, 5)


def test_identical_samples_are_a_clear_error():
    samples = torch.ones(4, 10)
    with pytest.raises(utils.UsageError, match="fewer directions"):
        utils.subspace_basis(samples, 2)


def test_random_basis_is_orthonormal_and_seeded():
    a = utils.random_basis(2000, 10, seed=7)
    b = utils.random_basis(2000, 10, seed=7)
    c = utils.random_basis(2000, 10, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a @ a.T, torch.eye(10, dtype=torch.float64), atol=1e-12)
