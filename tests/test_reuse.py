"""--reuse (./run.sh demo reruns like make): a finished run with the same settings is kept as it is,
an unfinished one resumes, other settings are refused; and the subspace scripts take the samples'
data settings from run.json when they are not given."""
import json
import os

import pytest

import utils
from conftest import DIGITS_SUB, Stopped, run_here, stop_training_at


def snapshot(folder):
    """Every file of ``folder`` (recursively) with its bytes and modification time."""
    files = {}
    for here, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(here, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return files


@pytest.fixture
def sgd(tmp_path, data_args):
    return [*data_args, "--epochs", 2, "--batch-size", 16, "--print-freq", 100, "--save-dir",
            tmp_path / "run"]


def test_reuse_keeps_a_finished_sgd_run_and_refuses_other_settings(sgd, tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_here("train_sgd.py", *sgd, "--reuse") == 0  # nothing there: it starts
    assert utils.available_samples(str(folder)) == [0, 1, 2]
    before = snapshot(folder)
    capsys.readouterr()
    assert run_here("train_sgd.py", *sgd, "--reuse") == 0
    out = capsys.readouterr().out
    assert "=> --reuse: " in out and "kept as it is" in out and "Epoch: [" not in out
    assert snapshot(folder) == before  # not a byte, not a time stamp changed
    # Other settings: refused in one line naming what differs, nothing written
    assert run_here("train_sgd.py", *sgd, "--reuse", "--lr", 0.05) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reuse: " in err[0] and "--lr 0.05 here, 0.1 there" in err[0]
    assert "--overwrite" in err[0]
    assert snapshot(folder) == before
    # More epochs: the finished run is extended, as --resume does
    assert run_here("train_sgd.py", *[a if a != 2 else 3 for a in sgd], "--reuse") == 0
    assert "continuing the finished run" in capsys.readouterr().out
    assert utils.available_samples(str(folder)) == [0, 1, 2, 3]
    # --reuse with a flag that says otherwise
    for other in (["--overwrite"], ["--resume"], ["-e"]):
        assert run_here("train_sgd.py", *sgd, "--reuse", *other) == 2
        assert "contradict each other" in capsys.readouterr().err


def test_reuse_resumes_an_interrupted_subspace_run_then_keeps_it(sgd, tmp_path, monkeypatch,
                                                                  capsys):
    folder = tmp_path / "run"
    assert run_here("train_sgd.py", *sgd) == 0
    psgd = [*sgd, "--params_end", 3, "--lr", 0.1, "--reuse", "--n_components", 2]
    stop_training_at(monkeypatch, epoch=1, step=2)  # as Ctrl-C there
    with pytest.raises(Stopped):
        run_here("train_psgd.py", *psgd)
    monkeypatch.undo()
    assert not (folder / "PSGD.pt").exists()
    capsys.readouterr()
    assert run_here("train_psgd.py", *psgd) == 0
    out = capsys.readouterr().out
    assert "=> --reuse: continuing the unfinished run" in out and "(epoch 1 of 2)" in out
    results = json.loads((folder / "results_psgd.json").read_text())
    assert [e["epoch"] for e in results["epochs"]] == [0, 1, 2] and "final" in results
    before = snapshot(folder)
    assert run_here("train_psgd.py", *psgd) == 0
    assert "kept as it is" in capsys.readouterr().out
    assert snapshot(folder) == before
    # Another basis size under the same names: refused, naming it
    assert run_here("train_psgd.py", *psgd[:-1], 1) == 2
    assert "--n_components 1 here, 2 there" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_subspace_scripts_take_the_samples_settings_from_run_json(sgd_reference, tmp_path,
                                                                   mnist_root, capsys):
    """sgd_reference: resnet8 on MNIST, 20% noisy labels, seed 5; none of it given here."""
    folder = tmp_path / "samples"
    os.makedirs(folder)
    for name in ("0.pt", "1.pt", "2.pt", "run.json", "noisy_labels.json"):
        (folder / name).write_bytes((sgd_reference / name).read_bytes())
    argv = ["--data-root", mnist_root, "--device", "cpu", "--save-dir", folder, "--params_end", 3,
            "--n_components", 2, "--epochs", 1, "--batch-size", 16, "--print-freq", 100]
    assert run_here("train_pbfgs.py", *argv) == 0
    out = capsys.readouterr().out
    line = f"=> --arch resnet8, --datasets MNIST, --corrupt 0.2, --randomseed 5: the samples' " \
           f"settings, from {folder}/run.json (not given on the command line)"
    assert line in out.splitlines() and "Random Seed: 5" in out
    args = json.loads((folder / "results_pbfgs.json").read_text())["args"]
    assert (args["arch"], args["datasets"], args["corrupt"], args["randomseed"]) == \
        ("resnet8", "MNIST", 0.2, 5)
    # Given flags win (and are checked against the samples as before); swa.py takes them too
    assert run_here("train_psgd.py", *argv, "--arch", "resnet20") == 2
    assert "--arch resnet20 differs from the samples" in capsys.readouterr().err
    assert run_here("swa.py", "--data-root", mnist_root, "--device", "cpu", "--save-dir", folder,
                    "--params_end", 3) == 0
    assert "=> --arch resnet8, --datasets MNIST" in capsys.readouterr().out
    # Without run.json (the authors' folders): the authors' defaults (no noise, seed 1), no line
    os.unlink(folder / "run.json")
    assert run_here("train_psgd.py", *argv, "--datasets", "MNIST", "--arch", "resnet8",
                    "--output-tag", "bare") == 0
    assert "the samples' settings" not in capsys.readouterr().out
    args = json.loads((folder / "results_psgd_bare.json").read_text())["args"]
    assert (args["corrupt"], args["randomseed"], args["smalldatasets"]) == (0.0, 1, None)


@pytest.mark.parametrize("k,said", [(2, "(the 2: "), (5, "(the 5: "), (6, "(top 5: ")])
def test_the_basis_line_names_as_many_directions_as_the_basis_has(digits_samples, k, said, capsys):
    assert run_here("train_psgd.py", *DIGITS_SUB, "--n_components", k, "--save-dir",
                    digits_samples, "-e") == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("=> DLDR basis")]
    ratios = line.split(said)[1].rstrip(")").split(", ")
    assert len(ratios) == min(k, 5)
