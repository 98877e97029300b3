"""Samples every N steps (--sample-every-steps), the authors' ImageNet rule, and runs stopped
inside an epoch by a signal that resume to the same samples, on DIGITS.

Sampling only writes files: a run that samples every step holds every weight vector of the
trajectory, so the samples of the other rules, and the per-epoch samples, are compared with its
samples at the steps they were taken."""
import json
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import summarize
import utils
from conftest import SEED, Stopped, run_here, sigterm_during_step, stop_training_at

# 431 training images at batch 64: 7 batches an epoch, 14 steps in 2 epochs
DIGITS = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--smalldatasets", 0.3,
          "--batch-size", 64, "--epochs", 2, "--lr", 0.1, "--print-freq", 100, "--randomseed",
          SEED, "--corrupt", 0.1]
BATCHES = 7


def results(folder, tag="sgd"):
    with open(os.path.join(folder, f"results_{tag}.json")) as f:
        return json.load(f)


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def authors_loop(batches, epochs, every):
    """The authors' main.py, its sampling alone: sample_idx counted up after the step on batch i
    where i % every == 0 (0.pt before training). Returns [(sample, epoch, batch)]."""
    taken, sample_idx = [(0, 0, None)], 0
    for epoch in range(epochs):
        for i in range(batches):
            if i % every == 0:
                sample_idx += 1
                taken.append((sample_idx, epoch, i))
    return taken


@settings(max_examples=200, deadline=None)
@given(batches=st.integers(1, 40), epochs=st.integers(0, 4), every=st.integers(1, 50),
       checkpoint_every=st.one_of(st.none(), st.integers(1, 30)),
       rule=st.sampled_from(utils.SAMPLE_RULES))
def test_the_plan_samples_as_the_loops_it_stands_for(batches, epochs, every, checkpoint_every,
                                                     rule):
    plan = utils.SamplingPlan(every, rule, checkpoint_every, batches)
    due = [(e, i) for e in range(epochs) for i in range(batches) if plan.sample_due(e, i)]
    if rule == "steps":  # global steps N, 2N, ... counted across epochs
        assert [plan.step(e, i) for e, i in due] == list(range(every, epochs * batches + 1, every))
    else:
        assert [(1 + k, e, i) for k, (e, i) in enumerate(due)] == \
            authors_loop(batches, epochs, every)[1:]
    assert plan.samples_in(epochs) == len(due) + 1
    for e in range(epochs):
        for i in range(batches):
            step = plan.step(e, i)
            assert step == e * batches + i + 1
            assert plan.checkpoint_due(e, i) == (plan.sample_due(e, i) or bool(
                checkpoint_every and step % checkpoint_every == 0))


def test_the_plan_refuses_what_cannot_be_sampled():
    for bad in (dict(every=-1), dict(rule="hourly"), dict(batches=0),
                dict(checkpoint_every=-2)):
        with pytest.raises(ValueError):
            utils.SamplingPlan(**bad)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same run (DIGITS above) sampled after every epoch, every step, and by the authors'
    rule every 3 batches."""
    tmp = tmp_path_factory.mktemp("step_sampling")
    made = {}
    for name, extra in (("epoch", []), ("step", ["--sample-every-steps", 1]),
                        ("authors", ["--sample-every-steps", 3, "--sample-rule",
                                     "authors-imagenet"])):
        made[name] = tmp / name
        assert run_here("train_sgd.py", *DIGITS, *extra, "--save-dir", made[name]) == 0
    return made


def test_step_samples_are_numbered_from_0_with_their_steps_recorded(folders):
    every = folders["step"]
    assert utils.available_samples(str(every)) == list(range(2 * BATCHES + 1))
    taken = results(every)["samples"]
    assert [t["sample"] for t in taken] == [t["step"] for t in taken] == list(range(15))
    assert [(t["epoch"], t["batch"]) for t in taken[1:]] == [(e, i) for e in range(2)
                                                             for i in range(BATCHES)]
    assert results(every)["sampling"] == {"every_steps": 1, "rule": "steps",
                                          "batches_per_epoch": BATCHES}
    # Sampling changes no step: the per-epoch samples are the step samples at 7 and 14
    for epoch in range(3):
        assert same_bytes(folders["epoch"] / f"{epoch}.pt", every / f"{epoch * BATCHES}.pt")
    a, b = results(folders["epoch"]), results(every)
    assert a["final"] == b["final"] and "samples" not in a and "sampling" not in a


def test_the_authors_rule_numbers_its_samples_as_their_main_py(folders):
    authors = folders["authors"]
    expected = authors_loop(BATCHES, 2, 3)  # batches 0, 3, 6 of each epoch: 7 samples
    assert utils.available_samples(str(authors)) == [s for s, _, _ in expected] == list(range(7))
    taken = results(authors)["samples"]
    assert [(t["sample"], t["epoch"], t["batch"]) for t in taken] == expected
    for t in taken:  # the weights after that step: the every-step run's sample of it
        assert t["step"] == (0 if t["batch"] is None else t["epoch"] * BATCHES + t["batch"] + 1)
        assert same_bytes(authors / f"{t['sample']}.pt", folders["step"] / f"{t['step']}.pt")
    line = summarize.table(str(authors)).splitlines()[-1]
    assert line.startswith("SGD samples 0..6 taken by step: every 3 steps (rule authors-imagenet)"
                           ", steps 0..14, 7 batches an epoch; the last at epoch 1, batch 6"), line


def test_pbfgs_and_psgd_train_from_a_step_sampled_folder(folders, tmp_path, capsys):
    """Both train from the every-step folder (P-SGD on every second sample, through a basis file
    it then reuses); their records, the plots and stale detection know the samples' steps."""
    folder, basis_file = folders["step"], tmp_path / "basis.pt"
    sub = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--print-freq", 100,
           "--save-dir", folder, "--epochs", 1, "--n_components", 4, "--params_end", 15]
    assert run_here("train_pbfgs.py", *sub, "--batch-size", 128) == 0
    assert "4 directions from 15 samples 0..14 (steps 0..14)" in capsys.readouterr().out
    psgd = [*sub, "--params_step", 2, "--lr", 0.5, "--batch-size", 64, "--basis-file", basis_file]
    for _ in range(2):
        assert run_here("train_psgd.py", *psgd, "--overwrite") == 0
    assert "(dldr basis of samples 0..14 step 2 (steps 0..14), unchanged, 4 directions)" in \
        capsys.readouterr().out
    for tag, used in (("pbfgs", list(range(15))), ("psgd", list(range(0, 15, 2)))):
        run = results(folder, tag)
        assert run["sample_fingerprint"]["epochs"] == run["sample_fingerprint"]["steps"] == used
        start, final = run["start"], run["final"]  # trained: BatchNorm re-estimated at both ends
        assert final["test_loss_bn"] < 0.8 * start["test_loss_bn"], tag
        assert final["test_acc_bn"] > 20, tag  # twice a guess
    import plot_results
    runs = summarize.load(str(folder))[0]
    samples, epochs, _, _ = plot_results.trajectory_pca(str(folder))
    figure, _ = plot_results.plot_explained_variance(samples, epochs, runs)
    assert "samples 0..14 (steps 0..14)" in figure.axes[0].get_title()
    # Sample 13 replaced: P-BFGS, which used it, is stale; P-SGD, on the even samples, is not
    original = (folder / "13.pt").read_bytes()
    state = torch.load(folder / "13.pt", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()},
               folder / "13.pt")
    table = summarize.table(str(folder))
    assert "STALE: results_pbfgs.json: made from other samples 0..14" in table, table
    assert "results_psgd.json" not in table.split("STALE")[-1]
    (folder / "13.pt").write_bytes(original)  # (the folder is the module's)
    assert "STALE" not in summarize.table(str(folder))


@pytest.mark.parametrize("sampling", [["--sample-every-steps", 3], []],
                         ids=["every 3 steps", "every epoch"])
def test_sigterm_inside_an_epoch_checkpoints_that_step_and_resumes_bit_for_bit(
        folders, sampling, tmp_path, capsys):
    stopped = tmp_path / "stopped"
    with sigterm_during_step(1, 4):
        assert run_here("train_sgd.py", *DIGITS, *sampling, "--save-dir", stopped) == 128 + 15
    err = capsys.readouterr().err
    assert "stopped by SIGTERM during epoch 1; checkpoint.pt holds the run after 1 epochs and 5 " \
           "batches of the next; resume with: " in err, err
    ckpt = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 5)
    # --epochs 1 would end it with half of epoch 1 trained: refused, nothing written
    assert run_here("train_sgd.py", *DIGITS, *sampling, "--epochs", 1, "--save-dir", stopped,
                    "--resume") == 2
    assert "holds 1 epochs and 5 batches of the next; use --epochs >= 2" in capsys.readouterr().err
    assert run_here("train_sgd.py", *DIGITS, *sampling, "--save-dir", stopped, "--resume") == 0
    assert "inside epoch 1, after its batch 4" in capsys.readouterr().out
    every = 3 if sampling else BATCHES
    have = utils.available_samples(str(stopped))
    assert have == list(range(2 * BATCHES // every + 1))
    for k in have:
        assert same_bytes(stopped / f"{k}.pt", folders["step"] / f"{k * every}.pt"), k
    a, b = results(folders["epoch"]), results(stopped)
    strip = lambda r: [{k: v for k, v in e.items() if "time" not in k and k != "images_per_s"}
                       for e in r["epochs"]]
    assert strip(a) == strip(b) and a["final"] == b["final"]


def test_step_sampling_flags_are_checked_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "none"
    for extra, said in ((["--sample-rule", "authors-imagenet"], "pass --sample-every-steps N"),
                        (["--sample-every-steps", 5, "--start-epoch", 1], "numbered by step"),
                        (["--sample-every-steps", -1], "--sample-every-steps")):
        assert run_here("train_sgd.py", *DIGITS, *extra, "--save-dir", folder) == 2
        assert said in capsys.readouterr().err
    assert not folder.exists()


def test_resuming_with_another_sampling_is_refused(folders, tmp_path, capsys):
    """A checkpoint of a per-epoch run continued with --sample-every-steps (or the other way):
    one line naming the flag, exit 2."""
    assert run_here("train_sgd.py", *DIGITS, "--epochs", 3, "--sample-every-steps", 2,
                    "--save-dir", folders["epoch"], "--resume") == 2
    err = capsys.readouterr().err
    assert "--sample-every-steps 2 here, None there" in err, err


def test_a_run_that_dies_resumes_from_its_last_checkpoint_every_n_steps(folders, tmp_path,
                                                                        monkeypatch):
    """--checkpoint-every-steps 4 on a per-epoch run: the process dies during the step on batch 5
    of epoch 1 (step 13, nothing written at the death); its last checkpoint is step 12's, inside
    epoch 1, and the resumed run ends as the run never stopped."""
    died = tmp_path / "died"
    stop_training_at(monkeypatch, 1, 5)
    with pytest.raises(Stopped):
        run_here("train_sgd.py", *DIGITS, "--checkpoint-every-steps", 4, "--save-dir", died)
    monkeypatch.undo()
    ckpt = torch.load(died / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 5)  # step 12 = 7 + 5
    assert utils.available_samples(str(died)) == [0, 1]
    assert run_here("train_sgd.py", *DIGITS, "--checkpoint-every-steps", 4, "--save-dir", died,
                    "--resume") == 0
    for epoch in range(3):
        assert same_bytes(died / f"{epoch}.pt", folders["epoch"] / f"{epoch}.pt"), epoch
    assert results(died)["final"] == results(folders["epoch"])["final"]
