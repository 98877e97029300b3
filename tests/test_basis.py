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
    whole, r1 = utils.subspace_basis(samples, 6, block=samples.shape[1])
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


# ---- the streaming basis (sample files, memory-mapped, column blocks) and --params_step ----

def _small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 30 * 30, 10))


def _write_walk(model, folder, n, seed=0):
    """Samples 0..n-1 of a random walk from the model's weights (a low-rank-ish trajectory)."""
    g = torch.Generator().manual_seed(seed)
    drift = [torch.randn(p.shape, generator=g) for p in model.parameters()]
    with torch.no_grad():
        for e in range(n):
            utils.save_sample(model, str(folder), e)
            for p, d in zip(model.parameters(), drift):
                p.add_(0.05 * d + 0.02 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def walk_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("walk")
    _write_walk(_small_model(), folder, 9)
    return folder


def test_streaming_basis_equals_in_memory_basis_and_float64_svd(walk_samples):
    model, k = _small_model(), 5
    samples = utils.load_sample_matrix(str(walk_samples), model, range(9), "small")
    paths = [utils.sample_path(str(walk_samples), e) for e in range(9)]
    ref, ref_ratios = utils.subspace_basis(samples, k)
    # 2 MB: two read blocks, split inside a parameter, each in many float64 chunks
    for budget in (1 << 30, 2 << 20):
        basis, ratios = utils.streaming_subspace_basis(paths, model, k, working_bytes=budget)
        assert basis.dtype == torch.float32 and basis.shape == ref.shape
        assert (basis.double() - ref).abs().max() < 1e-6  # same rows, same signs
        assert torch.allclose(ratios, ref_ratios, rtol=1e-10)
    # float64 SVD reference, numpy: same subspace, rows equal up to sign, same ratios
    x = samples.double().numpy()
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    ours = basis.double().numpy()
    assert np.abs(ours - (ours @ vt[:k].T) @ vt[:k]).max() < 1e-6  # in the reference's span
    np.testing.assert_allclose(np.abs((ours * vt[:k]).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(ratios.numpy(), s[:k] ** 2 / (s ** 2).sum(), rtol=1e-8)
    np.testing.assert_allclose(ours @ ours.T, np.eye(k), atol=1e-6)


def test_streaming_basis_names_a_sample_of_another_model(walk_samples, tmp_path):
    paths = [utils.sample_path(str(walk_samples), e) for e in range(3)]
    torch.save({"weight": torch.zeros(3)}, tmp_path / "3.pt")
    with pytest.raises(utils.UsageError, match="3.pt: no parameter '0.weight'"):
        utils.streaming_subspace_basis(paths + [str(tmp_path / "3.pt")], _small_model(), 2)
    with pytest.raises(utils.UsageError, match="--n_components 3: 3 samples span at most 2"):
        utils.streaming_subspace_basis(paths, _small_model(), 3)


MEMORY_CHILD = r"""
import json, os, sys, torch
import utils
torch.set_num_threads(1)  # memory is measured here; small ops on 2 busy cores are faster on one
folder, n, k, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
model = torch.nn.Linear(1000, 1000)
paths = [utils.sample_path(folder, e) for e in range(n)]
# warm-up: LAPACK and the unpickler load their code on first use, which is not the working set
utils.streaming_subspace_basis(paths[:3], model, 2)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident set
basis, _ = utils.streaming_subspace_basis(paths, model, k, working_bytes=budget)
print(json.dumps({"peak": status("VmHWM") - base, "basis": basis.numel() * 4}))
"""


def test_streaming_basis_peak_memory_is_basis_plus_working_set(tmp_path):
    import json
    import os
    import subprocess
    import sys
    n, k, budget = 20, 2, 8 << 20
    g = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(1000, 1000, generator=g), torch.randn(1000, generator=g)
    directions = torch.randn(6, 1000 * 1001, generator=g)
    for e in range(n):
        v = (torch.randn(6, generator=g) * (e + 1)) @ directions
        torch.save({"weight": w0 + v[:10 ** 6].view(1000, 1000), "bias": b0 + v[10 ** 6:]},
                   utils.sample_path(str(tmp_path), e))
    total = n * 1000 * 1001 * 4  # 80 MB of samples
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path), str(n), str(k),
                          str(budget)], capture_output=True, text=True, timeout=300,
                         cwd=utils.__file__.rsplit("/", 1)[0],
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Mapped pages of every file kept would make this ~total; the basis is 8 MB, budget 8 MB.
    assert got["peak"] < got["basis"] + budget + (16 << 20), got
    assert got["peak"] < total / 2, got


def test_params_step_uses_every_sth_sample(walk_samples, tmp_path):
    import train_psgd
    for e in (0, 2, 4, 6):  # odd samples absent: a stepped range needs only the samples it uses
        (tmp_path / f"{e}.pt").write_bytes(b"")
    argv = ["--datasets", "DIGITS", "--device", "cpu", "--save-dir", str(tmp_path),
            "--params_end", "7", "--params-step", "2"]

    def check(args):  # every check of a subspace run before anything is loaded
        utils.SubspaceRun("psgd", "P-SGD", utils.SubspaceOptions.from_args(args), {})

    args = train_psgd.build_parser().parse_args(argv + ["--n_components", "3"])
    check(args)
    trajectory = utils.Trajectory(args.save_dir, args.params_start, args.params_end,
                                  args.params_step)
    assert trajectory.epochs == [0, 2, 4, 6]
    assert trajectory.describe() == utils.describe_sample_epochs(trajectory.epochs, 2) == "0..6 step 2"
    too_many = train_psgd.build_parser().parse_args(argv + ["--n_components", "4"])
    with pytest.raises(utils.UsageError, match=r"--n_components 4: 4 samples \(0..6 step 2\) span "
                                               r"at most 3 directions.*smaller --params_step"):
        check(too_many)
    unstepped = train_psgd.build_parser().parse_args(argv[:-2] + ["--n_components", "3"])
    with pytest.raises(utils.UsageError, match="sample 1.pt is missing"):
        check(unstepped)
    # the matrix the scripts build: rows 0, 3, 6 of the full one
    model = _small_model()
    full = utils.load_sample_matrix(str(walk_samples), model, range(9), "small")
    stepped = utils.load_sample_matrix(str(walk_samples), model, range(0, 9, 3), "small")
    assert torch.equal(stepped, full[[0, 3, 6]])


def test_large_or_flagged_sample_sets_stream(tmp_path, monkeypatch):
    import dldr.trajectory
    model = utils.build_model("resnet20", "DIGITS", 10, torch.device("cpu"))
    _write_walk(model, tmp_path, 7)
    trajectory = utils.Trajectory(str(tmp_path), 0, 7, 3, "resnet20")
    assert len(trajectory) == 3 and not trajectory.streams(model)
    cpu = torch.device("cpu")
    in_memory = utils.build_basis("dldr", trajectory, 2, model, cpu)
    assert not in_memory.streamed and in_memory.matrix.dtype == torch.float64
    flagged = utils.build_basis("dldr", trajectory, 2, model, cpu, streaming=True)
    monkeypatch.setattr(dldr.trajectory, "STREAMING_BASIS_BYTES", 0)  # as if the samples were > 2 GiB
    assert trajectory.streams(model)
    large = utils.build_basis("dldr", trajectory, 2, model, cpu)
    for streamed in (flagged, large):
        assert streamed.streamed and streamed.matrix.shape == in_memory.matrix.shape
        assert streamed.matrix.dtype == torch.float32
        assert (streamed.matrix.double() - in_memory.matrix).abs().max() < 1e-6
        assert streamed.ratios == pytest.approx(in_memory.ratios, rel=1e-9)
