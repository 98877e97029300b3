"""What sits beside DLDR on the same trajectory: TWA's span basis (against a float64 reference),
the start from the samples' mean, weight decay that stays in the span, the basis saved once and
reused, and SWA (against torch's update_bn on the mean)."""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
import utils
from conftest import SEED, run_here

# DIGITS_SUB's data (resnet8, 10% noisy labels, its seed), a smaller training set for speed
DATA = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--randomseed", SEED,
        "--corrupt", "0.1", "--print-freq", "100"]


def _walk(n=9, dim=4000, seed=0):
    """Raw samples along a trajectory: a common offset (the initial weights) plus a curved path,
    so that they are far from orthogonal, as SGD samples are."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(dim, generator=g, dtype=torch.float64)
    steps = torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.05
    return (start + steps.cumsum(0)).float()


@pytest.mark.parametrize("block", [None, 333])
def test_span_basis_is_orthonormal_spans_the_samples_and_orders_them_as_gram_schmidt(block):
    samples = _walk()
    basis = utils.span_basis(samples, block=block)
    w = samples.double().numpy()
    b = basis.numpy()
    assert basis.dtype == torch.float64 and b.shape == w.shape
    np.testing.assert_allclose(b @ b.T, np.eye(len(w)), atol=1e-12)
    # The float64 reference: numpy's QR of the samples, signs as Gram-Schmidt's (diag(R) > 0)
    q, r = np.linalg.qr(w.T)
    q = q * np.sign(np.diag(r))
    np.testing.assert_allclose(b, q.T, atol=1e-9)
    # Every sample lies in the span: its projection is itself
    assert np.abs(w - (w @ b.T) @ b).max() < 1e-10 * np.abs(w).max()
    # Row i lies in the span of samples 0..i (Gram-Schmidt's order)
    for i in range(len(w)):
        coef, *_ = np.linalg.lstsq(w[:i + 1].T, b[i], rcond=None)
        assert np.abs(w[:i + 1].T @ coef - b[i]).max() < 1e-9


def test_streamed_span_basis_equals_in_memory_one(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for e in range(6):
            utils.save_sample(model, str(tmp_path), e)
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    paths = [utils.sample_path(str(tmp_path), e) for e in range(6)]
    reference = utils.span_basis(utils.load_sample_matrix(str(tmp_path), model, range(6), "m"))
    for budget in (1 << 30, 1 << 20):  # one block, and many blocks split inside parameters
        streamed = utils.streaming_span_basis(paths, model, working_bytes=budget)
        assert streamed.dtype == torch.float32
        assert (streamed.double() - reference).abs().max() < 1e-6


def test_dependent_samples_are_a_clear_error():
    samples = _walk(n=4)
    samples[2] = samples[1]
    with pytest.raises(utils.UsageError, match="span fewer than 4 directions"):
        utils.span_basis(samples)


@pytest.fixture(scope="module")
def twa_run(digits_samples, tmp_path_factory):
    """TWA (train_twa.py, its defaults) for one epoch on a copy of the DIGITS samples, with a
    basis file, and P-SGD in the same span from the same basis file."""
    folder = tmp_path_factory.mktemp("twa") / "run"
    shutil.copytree(digits_samples, folder, ignore=lambda d, names: [
        n for n in names if not (n[:-3].isdigit() or n in ("run.json", "noisy_labels.json"))])
    common = [*DATA, "--params_end", 7, "--save-dir", folder, "--basis-file", folder / "span.pt"]
    assert run_here("train_twa.py", *common, "--epochs", 1, "--batch-size", 128,
                    "--lr", 0.5) == 0
    return folder, common


def _vector(state, model):
    return torch.cat([state[name].reshape(-1).double() for name, _ in model.named_parameters()])


def test_twa_starts_from_the_exact_mean_with_reestimated_statistics(twa_run):
    folder, _ = twa_run
    results = json.load(open(folder / "results_twa.json"))
    assert results["basis"] == "span" and results["train_start"] == "mean"
    assert results["args"]["lr"] == 0.5 and results["args"]["weight_decay"] == 1e-5
    # The mean, computed here in float64 from the files, in float32: parameters and statistics
    states = [torch.load(folder / f"{e}.pt", weights_only=True) for e in range(7)]
    model = models.build("resnet8", 10)
    mean = {k: (sum(s[k].double() for s in states) / 7).float() if v.is_floating_point()
            else states[-1][k] for k, v in states[0].items()}
    model.load_state_dict(mean)
    cpu = torch.device("cpu")
    train, test = utils.load_data("DIGITS", None, corrupt=0.1, seed=3)
    test_loader = utils.make_loader(test, 128, cpu, False)
    averaged = utils.evaluate(model, test_loader)
    torch.optim.swa_utils.update_bn(utils.bn_loader(train, 128, cpu), model)
    reestimated = utils.evaluate(model, test_loader)
    # The run started there: its start's two evaluations are these, to the bit ...
    assert (results["start"]["test_loss"], results["start"]["test_acc"]) == averaged
    assert (results["start"]["test_loss_bn"], results["start"]["test_acc_bn"]) == reestimated
    # ... and its coordinates lead back from the final weights to the mean
    basis = torch.load(folder / "span.pt", weights_only=True)["matrix"]
    final = _vector(torch.load(folder / "TWA.pt", weights_only=True), model)
    coords = torch.tensor(results["epochs"][-1]["coords"], dtype=torch.float64)
    start = final - basis.double().T @ coords
    assert (start - _vector(mean, model)).abs().max() < 1e-5 * _vector(mean, model).abs().max()


def test_weight_decay_keeps_the_weights_in_the_span(twa_run):
    folder, _ = twa_run
    model = models.build("resnet8", 10)
    samples = utils.load_sample_matrix(str(folder), model, range(7), "resnet8")
    span = utils.span_basis(samples)  # float64, the reference
    final = _vector(torch.load(folder / "TWA.pt", weights_only=True), model)
    start = samples.double().mean(0)
    outside = final - span.T @ (span @ final)
    assert (final - start).norm() > 1e-3 * final.norm()  # it moved
    assert outside.norm() < 1e-6 * final.norm()


def test_the_saved_basis_is_reused_when_it_matches_and_rebuilt_when_a_sample_changed(twa_run,
                                                                                     tmp_path,
                                                                                     capsys):
    folder, common = twa_run
    saved = torch.load(folder / "span.pt", weights_only=True)
    assert saved["kind"] == "span" and saved["epochs"] == list(range(7))
    capsys.readouterr()
    assert run_here("train_psgd.py", *common, "--basis", "span", "--epochs", 1, "--lr", 0.5,
                    "--batch-size", 256, "-e") == 0
    out = capsys.readouterr().out
    assert "--basis-file" in out and "loaded" in out, out
    # A sample changed: the file's basis is not used, but built again and saved there
    copy_dir = tmp_path / "changed"
    shutil.copytree(folder, copy_dir)
    state = torch.load(copy_dir / "4.pt", weights_only=True)
    state["linear.weight"] += 0.01
    torch.save(state, copy_dir / "4.pt")
    argv = [a if a != folder / "span.pt" else copy_dir / "span.pt" for a in common]
    argv = [a if a != folder else copy_dir for a in argv]
    assert run_here("train_psgd.py", *argv, "--basis", "span", "--epochs", 1, "-e") == 0
    out = capsys.readouterr().out
    assert "made for another basis (the samples changed)" in out and "loaded" not in out
    assert "not saved (-e writes nothing)" in out  # -e never writes the file
    assert torch.load(copy_dir / "span.pt", weights_only=True)["samples"] == saved["samples"]
    # A run that trains saves it there: the scripts' call (build_basis), here in the library
    model = models.build("resnet8", 10)
    trajectory = utils.Trajectory(str(copy_dir), 0, 7, arch="resnet8")
    cpu = torch.device("cpu")
    utils.build_basis("span", trajectory, 7, model, cpu, basis_file=str(copy_dir / "span.pt"))
    rebuilt = torch.load(copy_dir / "span.pt", weights_only=True)
    assert rebuilt["samples"] != saved["samples"]
    assert not torch.equal(rebuilt["matrix"], saved["matrix"])
    # And a file of another kind is not a basis to use either
    assert run_here("train_psgd.py", *argv, "--basis", "dldr", "--n_components", 3,
                    "--epochs", 1, "-e") == 0
    assert "made for another basis (kind, n_components differ)" in capsys.readouterr().out
    # A streamed basis (float32) is not the in-memory one (float64) it would replace
    utils.build_basis("dldr", trajectory, 3, model, cpu, basis_file=str(copy_dir / "span.pt"))
    assert run_here("train_psgd.py", *argv, "--basis", "dldr", "--n_components", 3,
                    "--epochs", 1, "--streaming-basis", "-e") == 0
    assert "made for another basis (dtype differ)" in capsys.readouterr().out
    utils.build_basis("dldr", trajectory, 3, model, cpu, streaming=True,
                      basis_file=str(copy_dir / "span.pt"))
    assert torch.load(copy_dir / "span.pt", weights_only=True)["matrix"].dtype == torch.float32


def test_swa_is_update_bn_on_the_mean(twa_run, tmp_path):
    folder, _ = twa_run
    assert run_here("swa.py", *DATA, "--params_end", 7, "--batch-size", 64,
                    "--save-dir", folder) == 0
    results = json.load(open(folder / "results_swa.json"))
    model = models.build("resnet8", 10)
    utils.Trajectory(str(folder), 0, 7, arch="resnet8").load_mean_into(model)
    train, test = utils.load_data("DIGITS", None, corrupt=0.1, seed=3)
    cpu = torch.device("cpu")
    test_loader = utils.make_loader(test, 128, cpu, False)
    plain = utils.evaluate(model, test_loader)
    torch.optim.swa_utils.update_bn(utils.bn_loader(train, 64, cpu), model)
    loss, acc = utils.evaluate(model, test_loader)
    assert results["final"]["test_acc_bn"] == acc and results["final"]["test_loss_bn"] == loss
    assert results["final"]["test_acc"] == plain[1] == results["epochs"][0]["test_acc"]
    saved = torch.load(folder / "SWA.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert results["sample_fingerprint"]["epochs"] == list(range(7))
    # Another SWA replaces it only with --overwrite
    kept = (folder / "results_swa.json").read_bytes()
    assert run_here("swa.py", *DATA, "--params_start", 1, "--params_end", 7,
                    "--save-dir", folder) == 2
    assert (folder / "results_swa.json").read_bytes() == kept
    assert run_here("swa.py", *DATA, "--params_start", 1, "--params_end", 7, "--batch-size", 64,
                    "--save-dir", folder, "--overwrite") == 0
    results = json.load(open(folder / "results_swa.json"))
    assert results["samples"] == results["sample_fingerprint"]["epochs"] == list(range(1, 7))


def test_a_second_twa_does_not_replace_the_first(twa_run, capsys):
    folder, common = twa_run
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    capsys.readouterr()
    assert run_here("train_twa.py", *common, "--epochs", 1, "--lr", 0.7) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run (results_twa.json, TWA.pt and " \
        "checkpoint_twa.pt); pass --resume with more --epochs to extend it, pass --overwrite" \
        in err[0], err
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == before


@pytest.mark.end_to_end  # three P-BFGS runs (about 16 s): after the suite, in .ci/run
def test_mean_start_and_span_basis_under_the_subspace_scripts_resume_exactly(twa_run, tmp_path):
    folder, common = twa_run
    straight, stopped = tmp_path / "a", tmp_path / "b"
    for target in (straight, stopped):
        shutil.copytree(folder, target, ignore=lambda d, names: [
            n for n in names if not (n[:-3].isdigit() or n in ("run.json", "noisy_labels.json"))])
    argv = lambda f: [*DATA, "--params_end", 7, "--save-dir", f, "--basis", "span",  # noqa: E731
                      "--train-start", "mean", "--batch-size", 256]
    assert run_here("train_pbfgs.py", *argv(straight), "--epochs", 2) == 0
    assert run_here("train_pbfgs.py", *argv(stopped), "--epochs", 1) == 0
    assert run_here("train_pbfgs.py", *argv(stopped), "--epochs", 2, "--resume") == 0
    a = torch.load(straight / "PBFGS_span.pt", weights_only=True)
    b = torch.load(stopped / "PBFGS_span.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_twa_command_has_twas_defaults_and_the_dldr_scripts_keep_theirs():
    import train_pbfgs
    import train_psgd
    import train_twa
    twa = vars(train_twa.build_parser().parse_args([]))
    assert (twa["basis"], twa["train_start"], twa["lr"], twa["weight_decay"], twa["momentum"],
            twa["epochs"], twa["milestones"], twa["bn_reestimate"]) == ("span", "mean", 2.0, 1e-5,
                                                                       0.9, 10, None, True)
    assert train_psgd.twa_milestones(10) == [5, 8] and train_psgd.twa_milestones(2) == [1, 2]
    assert train_twa.build_parser().parse_args(["--train_start", "-1"]).train_start == "mean"
    for script in (train_psgd, train_pbfgs):
        dldr = vars(script.build_parser().parse_args([]))
        assert (dldr["basis"], dldr["train_start"], dldr["bn_reestimate"]) == ("dldr", None, False)
        assert script.build_parser().parse_args(["--bn-reestimate"]).bn_reestimate is True
