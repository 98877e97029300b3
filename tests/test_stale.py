"""Runs that cannot pass for each other: a new trajectory moves the old one's runs aside, results
files record the samples they were made from and the readers flag those that no longer match,
unreadable results files are named and skipped, the records take only this project's commit."""
import json
import os
import shutil
import subprocess

import pytest

import dldr.records
import plot_results
import summarize
import utils
from conftest import ROOT, run_here


def _run_on_samples(folder, tag, epochs, sha256=None):
    """A results file as the subspace scripts write it, made from samples ``epochs``."""
    record = {"epochs": list(epochs),
              "sha256": sha256 or dldr.records.samples_fingerprint(str(folder), epochs)}
    run = {"method": tag.split("_")[0], "sample_fingerprint": record, "final": {"test_acc": 90.0},
           "epochs": [{"epoch": e, "test_acc": 80.0 + e, "train_loss": 1.0 / (e + 1)}
                      for e in range(3)]}
    (folder / f"results_{tag}.json").write_text(json.dumps(run))


def test_sgd_overwrite_moves_the_old_trajectorys_runs_aside_and_readers_flag_stale_ones(
        digits_samples, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(digits_samples, folder, ignore=lambda d, names: [
        n for n in names if not (n[:-3].isdigit() or n in ("run.json", "results_sgd.json"))])
    _run_on_samples(folder, "twa", range(7))
    _run_on_samples(folder, "swa_tail", range(4, 7))
    for name in ("TWA.pt", "SWA_tail.pt", "checkpoint_twa.pt"):
        shutil.copy(folder / "6.pt", folder / name)
    (folder / "basis.pt").write_bytes(b"a basis file of another name")  # not a run's: it stays
    old = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    table = summarize.table(str(folder))
    assert "SWA (mean, BN re-est.), tag tail" in table and "STALE" not in table
    sgd = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--epochs", 1,
           "--smalldatasets", 0.1, "--batch-size", 64, "--print-freq", 100, "--save-dir", folder]
    # A run writing beside the samples holds its lock: they are not replaced under it
    lock = utils.OutputLock(str(folder), "twa", "results_twa.json").acquire()
    code = run_here("train_sgd.py", *sgd, "--overwrite")  # run_main releases the lock after
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another run" in err[0] and "twa run" in err[0], err
    assert sorted(os.listdir(folder)) == sorted([*old, ".twa.lock"])

    assert run_here("train_sgd.py", *sgd, "--overwrite") == 0
    out = capsys.readouterr().out
    [stale] = [n for n in os.listdir(folder) if n.startswith("stale_")]
    moved = ["SWA_tail.pt", "TWA.pt", "checkpoint_twa.pt", "results_swa_tail.json",
             "results_twa.json"]
    assert sorted(os.listdir(folder / stale)) == moved and f"moved to {folder / stale}" in out
    assert all((folder / stale / n).read_bytes() == old[n] for n in moved)
    assert (folder / "basis.pt").exists() and utils.available_samples(str(folder)) == [0, 1]
    assert [line.split()[0] for line in summarize.table(str(folder)).splitlines()[1:]] == ["SGD"]

    # A results file of the old samples brought back is stale for the summary and the plots
    shutil.copy(folder / stale / "results_twa.json", folder)
    table = summarize.table(str(folder)).splitlines()
    assert [line for line in table if line.startswith("TWA")][0].endswith("STALE")
    assert f"STALE: results_twa.json: its samples 0..6 are no longer all in {folder}" in table
    _run_on_samples(folder, "psgd", range(2), sha256="0" * 64)  # samples there, other contents
    assert "STALE: results_psgd.json: made from other samples 0..1 than those now in" in \
        summarize.table(str(folder))
    capsys.readouterr()
    plot_results.plot_save_dir(str(folder))
    err = capsys.readouterr().err
    assert "skipped results_twa.json: stale" in err and "skipped results_psgd.json: stale" in err
    _run_on_samples(folder, "pbfgs", range(2))  # the new samples': shown, not stale
    assert [line.split()[0] for line in summarize.table(str(folder)).splitlines()[1:4]] == [
        "SGD", "P-SGD", "P-BFGS"]
    assert not summarize.table(str(folder)).splitlines()[3].endswith("STALE")


def test_summarize_and_plots_name_an_unreadable_results_file_and_show_the_others(tmp_path,
                                                                                 capsys):
    (tmp_path / "results_psgd_random_k5.json").write_text(json.dumps(  # an older file: no record
        {"method": "psgd", "epochs": [{"epoch": 0, "test_acc": 10.0}]}))
    (tmp_path / "results_twa.json").write_text('{"epochs": [{"epoch": 0, ')  # cut short
    (tmp_path / "results_pbfgs.json").write_text('{"method": "pbfgs", "epochs": []}')
    lines = summarize.table(str(tmp_path)).splitlines()
    assert lines[1].startswith("P-SGD (random basis), tag k5 ") and len(lines) == 5
    assert lines[1].endswith("  UNFINISHED") and lines[2].startswith(  # no final evaluation
        "UNFINISHED: results_psgd_random_k5.json: no final evaluation")
    assert lines[3].startswith(f"skipped {tmp_path / 'results_pbfgs.json'}: no epoch recorded")
    assert lines[4].startswith(f"skipped {tmp_path / 'results_twa.json'}: not valid JSON")
    capsys.readouterr()
    written = plot_results.plot_save_dir(str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["curves.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("skipped ") for line in err), err
    for name in ("results_psgd_random_k5.json", "curves.png"):
        os.unlink(tmp_path / name)
    with pytest.raises(SystemExit, match="no readable results"):
        summarize.table(str(tmp_path))


@pytest.mark.parametrize("tag,label", [
    ("swa_tail", "SWA (mean, BN re-est.), tag tail"), ("sgd", "SGD (all parameters)"),
    ("psgd_random_k5", "P-SGD (random basis), tag k5"), ("twa_dldr", "TWA (DLDR basis)"),
    ("pbfgs_k5_b", "P-BFGS (DLDR basis), tag k5_b"), ("mine", "mine")])
def test_tagged_runs_have_readable_names(tag, label):
    assert summarize.label(tag) == label


def _git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_records_take_the_commit_of_this_project_only(tmp_path):
    """Installed inside another repository (vendor/ here), the records take no commit of it."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "vendor" / "dldr").mkdir(parents=True)
    (tmp_path / "vendor" / "dldr" / "records.py").write_text("")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "x")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert dldr.records.commit_of(str(tmp_path / "vendor")) is None
    assert dldr.records.commit_of(str(tmp_path)) == head
    (tmp_path / "vendor" / "dldr" / "records.py").write_text("changed")
    assert dldr.records.commit_of(str(tmp_path)) == head + "-dirty"
    assert dldr.records.git_commit().startswith(_git(ROOT, "rev-parse", "HEAD"))  # this project
