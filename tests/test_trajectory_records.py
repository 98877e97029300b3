"""The trajectory as the subspace runs take it: sample ranges checked without being built, basis
files verified before use (checksum, orthonormality) and never written by -e, records that state
what the run used, and -e of the mean evaluating the start training uses."""
import json
import os
import shutil
import time

import pytest
import torch

import models
import utils
from dldr.trajectory import matrix_checksum
from conftest import SEED, run_here

DATA = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--randomseed", SEED,
        "--corrupt", "0.1", "--print-freq", "100"]


def _copy_samples(source, target):
    shutil.copytree(source, target, ignore=lambda d, names: [
        n for n in names if not (n[:-3].isdigit() or n in ("run.json", "noisy_labels.json"))])
    return target


def _files(folder):
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}


def test_a_huge_params_end_is_answered_at_once(tmp_path, digits_samples, capsys):
    for e in range(3):
        utils.save_sample(models.build("resnet8", 10), str(tmp_path), e)
    start = time.perf_counter()
    trajectory = utils.Trajectory(str(tmp_path), 0, 10 ** 15)
    assert len(trajectory) == 10 ** 15  # a range, not a list
    with pytest.raises(utils.UsageError, match=r"--params_end 1000000000000000: sample 3\.pt is "
                                               r"missing .*samples present: 0\.\.2"):
        trajectory.check_present()
    with pytest.raises(utils.UsageError, match=r"sample 3\.pt is missing"):
        trajectory.epochs  # noqa: B018  (the list exists only once the folder holds it)
    with pytest.raises(utils.UsageError, match=r"sample 5\.pt is missing"):
        utils.check_sample_range(str(tmp_path), range(5, 10 ** 18, 7), 10 ** 18)
    assert time.perf_counter() - start < 1.0
    # The command line: exit 2, one line, at once
    before = _files(digits_samples)
    start = time.perf_counter()
    assert run_here("train_psgd.py", *DATA, "--save-dir", digits_samples, "--params_end",
                    10000000, "--n_components", 3) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--params_end 10000000: sample 7.pt is missing" in err[0]
    assert _files(digits_samples) == before


def _trajectory_and_model(folder):
    model = utils.build_model("resnet8", "DIGITS", 10, torch.device("cpu"))
    return utils.Trajectory(str(folder), 0, 7, 1, "resnet8"), model


def _build(folder, path, save=True, kind="span"):
    trajectory, model = _trajectory_and_model(folder)
    basis = utils.build_basis(kind, trajectory, 3, model, torch.device("cpu"), basis_file=str(path),
                              save=save)
    return basis


def test_a_damaged_basis_file_is_rebuilt_and_minus_e_never_writes_it(tmp_path, digits_samples):
    folder = _copy_samples(digits_samples, tmp_path / "s")
    path = tmp_path / "basis.pt"
    unsaved = _build(folder, path, save=False)  # -e: built, not saved
    assert not path.exists() and "not saved (-e writes nothing)" in unsaved.file_note
    built = _build(folder, path)
    saved = torch.load(path, weights_only=True)
    assert saved["checksum"] == matrix_checksum(built.matrix)
    assert "loaded" in _build(folder, path).file_note  # whole: reused

    def damage(change, checksum):
        """The file with its matrix changed by ``change``, its record kept; ``checksum``: False
        keeps the old checksum, a function gives the new matrix's, None leaves none."""
        state = dict(saved, matrix=saved["matrix"].clone())
        change(state["matrix"])
        state["checksum"] = checksum(state["matrix"]) if checksum else saved["checksum"]
        if checksum is None:
            del state["checksum"]
        torch.save(state, path)
        return path.read_bytes()

    def flip_8_bytes(matrix):
        raw = matrix.view(-1).view(torch.uint8)
        raw[1000:1008] ^= 0xFF

    def scale(matrix):
        matrix[0] *= 1.5

    cases = [(flip_8_bytes, False, "damaged (its matrix does not match its checksum), so rebuilt"),
             # a crafted file: the checksum of a matrix that is not orthonormal
             (scale, matrix_checksum, "damaged (its rows are not orthonormal: max |P P^T - I| "),
             (lambda m: None, None, "damaged (it records no checksum of its matrix")]
    for change, checksum, why in cases:
        damaged = damage(change, checksum)
        evaluated = _build(folder, path, save=False)
        assert why in evaluated.file_note and "not saved" in evaluated.file_note
        assert path.read_bytes() == damaged  # -e left it as it was
        assert torch.equal(evaluated.matrix, built.matrix)  # the basis rebuilt, not the damage
        rebuilt = _build(folder, path)
        assert why in rebuilt.file_note and "saved there" in rebuilt.file_note
        again = torch.load(path, weights_only=True)
        assert torch.equal(again["matrix"], saved["matrix"])
        assert again["checksum"] == saved["checksum"]


def test_damaged_or_unwritable_basis_files_through_the_command_line(tmp_path, digits_samples,
                                                                    capsys):
    folder = _copy_samples(digits_samples, tmp_path / "s")
    path = folder / "span.pt"
    argv = [*DATA, "--save-dir", folder, "--params_end", 7, "--basis", "span", "--batch-size",
            512, "--basis-file", path]
    # A path that cannot be written: refused before any data is loaded
    (tmp_path / "plain").write_text("a file, not a folder")
    for bad, why in ((tmp_path / "missing" / "b.pt", "does not exist"),
                     (tmp_path / "plain" / "b.pt", "does not exist"),
                     (tmp_path, "a folder")):
        before = _files(folder)
        args = [bad if a == path else a for a in argv]
        assert run_here("train_psgd.py", *args, "--epochs", 1) == 2
        err = capsys.readouterr()
        assert len(err.err.strip().splitlines()) == 1 and why in err.err, err.err
        assert err.out == ""  # nothing loaded, nothing logged
        assert _files(folder) == before
    # -e builds the basis without writing it
    assert run_here("train_psgd.py", *argv, "--epochs", 1, "-e") == 0
    assert not path.exists() and "not saved (-e writes nothing)" in capsys.readouterr().out
    # A damaged file (8 bytes of the matrix flipped, record intact): rebuilt with the reason,
    # the run trains as from a whole one
    trajectory, model = _trajectory_and_model(folder)
    utils.build_basis("span", trajectory, 7, model, torch.device("cpu"), basis_file=str(path))
    whole = torch.load(path, weights_only=True)
    data = bytearray(path.read_bytes())
    offset = data.find(whole["matrix"][2, 100:102].numpy().tobytes())
    assert offset > 0
    data[offset:offset + 8] = bytes(b ^ 0xFF for b in data[offset:offset + 8])
    path.write_bytes(bytes(data))
    assert run_here("train_psgd.py", *argv, "--epochs", 1, "-e") == 0
    assert "damaged (its matrix does not match its checksum), so rebuilt" in capsys.readouterr().out
    assert path.read_bytes() == bytes(data)
    assert run_here("train_psgd.py", *argv, "--epochs", 1) == 0
    out = capsys.readouterr().out
    assert "damaged (its matrix does not match its checksum), so rebuilt" in out
    assert torch.equal(torch.load(path, weights_only=True)["matrix"], whole["matrix"])
    results = json.load(open(folder / "results_psgd_span.json"))
    assert "final" in results and results["n_components"] == 7
    # what P-SGD used: the span's decay (applied there) and its own schedule
    assert results["weight_decay"] == 1e-4 and results["milestones"] == [30, 50]
    # A truncated file (a copy cut short, a full disk): rebuilt too, as docs/files.md says,
    # not refused as "not a loadable sample"
    whole_bytes = path.read_bytes()
    path.write_bytes(whole_bytes[:len(whole_bytes) // 2])
    assert run_here("train_psgd.py", *argv, "--epochs", 1, "--overwrite") == 0
    out = capsys.readouterr().out
    assert f"=> --basis-file {path}: damaged (not a loadable sample or checkpoint" in out
    assert torch.equal(torch.load(path, weights_only=True)["matrix"], whole["matrix"])


@pytest.fixture(scope="module")
def twa_five(digits_samples, tmp_path_factory):
    """A copy of the DIGITS samples and the command line of train_twa.py on its 5 samples 2..6
    for 2 epochs."""
    folder = _copy_samples(digits_samples, tmp_path_factory.mktemp("twa5") / "s")
    argv = [*DATA, "--save-dir", folder, "--params_start", 2, "--params_end", 7, "--epochs", 2,
            "--batch-size", 512]
    return folder, argv


def test_records_state_what_was_used(twa_five, capsys):
    folder, argv = twa_five
    capsys.readouterr()
    assert run_here("train_twa.py", *argv, "--n_components", 12) == 0
    out = capsys.readouterr().out
    assert ("=> note: --n_components 12 is ignored: the span basis has one direction per sample, "
            "5 here") in out
    results = json.load(open(folder / "results_twa.json"))
    assert results["args"]["n_components"] == 12 and results["args"]["milestones"] is None
    # what was used: the span's 5 directions, TWA's drops at 50% and 75% of 2 epochs, its decay
    assert (results["basis"], results["n_components"]) == ("span", 5)
    assert results["milestones"] == [1, 2] and results["weight_decay"] == 1e-5
    assert (results["lr"], results["momentum"]) == (2.0, 0.9)
    assert len(results["epochs"][-1]["coords"]) == 5
    assert [e["lr"] for e in results["epochs"][1:]] == [2.0, pytest.approx(0.2)]  # dropped at 1
    # --basis random: no weight decay applied, which the log says (and the record, as above)
    assert run_here("train_twa.py", *argv, "--basis", "random", "--n_components", 3, "-e") == 0
    out = capsys.readouterr().out
    assert "=> note: --weight-decay 1e-05 is not applied with --basis random" in out
    assert "is ignored" not in out


def test_minus_e_from_the_mean_evaluates_the_start_training_uses(twa_five, capsys):
    folder, argv = twa_five
    if not (folder / "results_twa.json").exists():
        assert run_here("train_twa.py", *argv) == 0
    start = json.load(open(folder / "results_twa.json"))["start"]
    assert start["test_acc_bn"] != start["test_acc"]  # the two differ on these samples
    capsys.readouterr()
    assert run_here("train_twa.py", *argv, "-e") == 0
    out = capsys.readouterr().out
    assert "BatchNorm statistics re-estimated on the training data, as training starts" in out
    assert f" * Prec@1 {start['test_acc_bn']:.3f}\tLoss {start['test_loss_bn']:.4f}" in out
