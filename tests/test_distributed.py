"""The scripts under torchrun: 2 processes, Gloo, on a small MNIST archive, in one launch.

The launch goes through tests/torchrun_audit.py, which runs SGD, then P-BFGS, then P-SGD in the
same two workers, records the files every rank touches and saves every rank's final parameters.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

import models
import train_pbfgs
import utils

SUB = ["--params_end", "3", "--n_components", "2"]


@pytest.fixture(scope="module")
def runs(data_args):
    """(SGD, P-BFGS, P-SGD) arguments on the tests' small MNIST, 80 training images. P-BFGS in
    float64, so that comparing with one process is not drowned in float32 rounding of an
    ill-conditioned gradient."""
    data = [*data_args, "--smalldatasets", "0.5", "--print-freq", "1"]
    return ([*data, "--epochs", 2, "--lr", 0.05, "--batch-size", 32],
            [*data, *SUB, "--epochs", 1, "--batch-size", 64, "--dtype", "float64"],
            [*data, *SUB, "--epochs", 1, "--batch-size", 32, "--lr", 0.3],
            [*data, "--params_end", "3", "--epochs", 1, "--batch-size", 32, "--lr", 0.1,
             "--dtype", "float64"])


def run_in_torchrun(scripts, audit):
    """The scripts (lists of a script's name and arguments) one after another in one torchrun
    launch of 2 processes (tests/torchrun_audit.py); returns rank 0's output."""
    argv = [str(a) for run in scripts for a in [*run, ":::"]][:-1]
    env = dict(os.environ, DLDR_AUDIT_DIR=str(audit), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", os.path.join(ROOT, "tests", "torchrun_audit.py"),
                          *argv], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


ZOO = ["--smalldatasets", "0.5", "--print-freq", "1", "--batch-size", "32"]
Z = 4  # the zoo's scripts follow the 4 of ``launch`` in the one launch: their audit numbers


@pytest.fixture(scope="module")
def both_launches(tmp_path_factory, runs, data_args):
    """One torchrun launch, 2 processes (one start-up for all), of two sets of scripts; returns
    (folder, rank 0's output of each set, the audit folder).

    First (``launch``): SGD sampling, then P-BFGS, P-SGD and TWA on its samples.
    Then (``zoo_launch``) the networks whose steps leave parameters without gradient
    (tests/tiny_models.py): stochastic depth's SGD straight for 2 epochs, and stopped after 1
    then resumed; P-BFGS and P-SGD on its samples; nasnet's SGD; the generators probe; its SGD
    sampled every 2 steps, straight and stopped by a signal inside an epoch, then resumed."""
    tmp = tmp_path_factory.mktemp("ddp")
    save, audit = tmp / "save", tmp / "audit"
    audit.mkdir()
    sgd, pbfgs, psgd, twa = runs
    scripts = [["train_sgd.py", *sgd, "--save-dir", save],
               ["train_pbfgs.py", *pbfgs, "--save-dir", save, "--output-tag", "two"],
               ["train_psgd.py", *psgd, "--save-dir", save],
               ["train_twa.py", *twa, "--save-dir", save, "--output-tag", "two"]]
    sd = [*data_args, *ZOO, "--arch", "tiny_stochasticdepth", "--lr", "0.05"]
    scripts += [["train_sgd.py", *sd, "--epochs", 2, "--save-dir", tmp / "straight"],
                ["train_sgd.py", *sd, "--epochs", 1, "--save-dir", tmp / "resumed"],
                ["train_sgd.py", *sd, "--epochs", 2, "--save-dir", tmp / "resumed", "--resume"],
                ["train_pbfgs.py", *sd, *SUB, "--epochs", 1, "--save-dir", tmp / "straight"],
                ["train_psgd.py", *sd, *SUB, "--epochs", 1, "--lr", 0.3, "--save-dir",
                 tmp / "straight"],
                ["train_sgd.py", *data_args, *ZOO, "--arch", "tiny_nasnet", "--epochs", 1,
                 "--lr", 0.05, "--save-dir", tmp / "nasnet"],
                ["rng_probe"]]
    # Samples every 2 steps: straight, then stopped by a SIGTERM to rank 1 alone inside epoch 1
    # (after its batch 1, between samples) and resumed
    steps = [*sd, "--epochs", 2, "--sample-every-steps", 2]
    scripts += [["train_sgd.py", *steps, "--save-dir", tmp / "steps"],
                ["sigterm", 1, 1, 1, "train_sgd.py", *steps, "--save-dir", tmp / "steps_stopped"],
                ["train_sgd.py", *steps, "--save-dir", tmp / "steps_stopped", "--resume"]]
    stdout = run_in_torchrun(scripts, audit)
    marker = f"::: script {Z}\n"
    assert stdout.count(marker) == 1
    first, zoo = stdout.split(marker)
    return tmp, (first, zoo), audit


@pytest.fixture(scope="module")
def launch(both_launches):
    tmp, (stdout, _), audit = both_launches
    return tmp / "save", stdout, audit


def files_written(audit, rank):
    """Files rank ``rank`` touched under the test's folder (tempfile's own probes in the system
    temp dir, made by libraries on import, are not the scripts' writes)."""
    path = audit / f"files_rank{rank}.txt"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [line for line in lines if line.split(" ", 1)[1].startswith(str(audit.parent))]


def final_params(audit, run):
    """Both ranks' parameters after script ``run``: bit-identical."""
    p0, p1 = (torch.load(audit / f"params_rank{r}_{run}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(p0, p1)
    return p0


def test_only_rank_0_writes_and_prints(launch):
    save, stdout, audit = launch
    assert files_written(audit, 1) == []
    written = {os.path.basename(line.split(" ", 1)[1]) for line in files_written(audit, 0)
               if line.startswith("replace")}
    assert {"0.pt", "1.pt", "2.pt", "run.json", "results_sgd.json", "checkpoint.pt",
            "results_pbfgs_two.json", "PBFGS_two.pt", "results_psgd.json", "PSGD.pt"} <= written
    for done in ("=> SGD done", "=> P-BFGS done", "=> P-SGD done", "=> TWA done"):
        assert stdout.count(done) == 1, stdout[-2000:]


def test_sgd_under_torchrun(launch):
    save, stdout, audit = launch
    params = final_params(audit, 0)
    assert "2 processes" in stdout
    state = utils.load_state(str(save / "2.pt"))
    names = [n for n, _ in models.build("resnet8", 10).named_parameters()]
    assert torch.equal(params, torch.cat([state[n].reshape(-1) for n in names]))
    run = json.loads((save / "run.json").read_text())
    assert run["processes"] == 2
    results = json.loads((save / "results_sgd.json").read_text())
    # Epoch metrics are totals over both processes: every training image counted once.
    assert results["epochs"][-1]["train_loss"] > 0 and len(results["epochs"]) == 3


def test_pbfgs_two_processes_match_one(launch, runs):
    """Same global batch: the 2-process P-BFGS run is the 1-process run."""
    save, _, audit = launch
    params2 = final_params(audit, 1)
    model = utils.run_main(train_pbfgs.main, [*map(str, runs[1]), "--save-dir", str(save),
                                              "--output-tag", "one"])
    params1 = torch.cat([p.detach().reshape(-1) for p in utils.trainable_parameters(model)])
    one, two = (json.loads((save / f"results_pbfgs_{t}.json").read_text())["epochs"]
                for t in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("train_loss", "test_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-12)
        assert b["coords"] == pytest.approx(a["coords"], rel=1e-5, abs=1e-9)
    assert torch.allclose(params2, params1, rtol=1e-6, atol=1e-9)
    # The final evaluation with BatchNorm statistics re-estimated over the global batches
    final1, final2 = (json.loads((save / f"results_pbfgs_{t}.json").read_text())["final"]
                      for t in ("one", "two"))
    assert final2["bn_reestimated"] and final2["test_acc_bn"] == pytest.approx(final1["test_acc_bn"])
    assert final2["test_loss_bn"] == pytest.approx(final1["test_loss_bn"], rel=1e-6)
    # The diagnostics under torchrun: rank 0 alone reads the samples for the trajectory's reach
    reach1, reach2 = (json.loads((save / f"results_pbfgs_{t}.json").read_text())["diagnostics"]
                      ["trajectory_reach"] for t in ("one", "two"))
    assert reach1 > 0 and reach2 == reach1
    # The step moved the parameters: the comparison is not between two unchanged models.
    start = utils.load_state(str(save / "0.pt"))
    assert (params1 - torch.cat([start[n].reshape(-1).double() for n, _ in
                                 model.named_parameters()])).abs().max() > 1e-3


def test_psgd_under_torchrun(launch):
    save, _, audit = launch
    final_params(audit, 2)
    results = json.loads((save / "results_psgd.json").read_text())
    assert all(torch.isfinite(torch.tensor(e["test_loss"])) for e in results["epochs"])


def test_twa_from_the_mean_two_processes_match_one(launch, runs):
    """The span basis, the start from the mean with BatchNorm statistics re-estimated over the
    global batches, weight decay: 2 processes compute what one does (float64)."""
    import train_twa
    save, _, audit = launch
    params2 = final_params(audit, 3)
    model = utils.run_main(train_twa.main, [*map(str, runs[3]), "--save-dir", str(save),
                                            "--output-tag", "one"])
    params1 = torch.cat([p.detach().reshape(-1) for p in utils.trainable_parameters(model)])
    one, two = (json.loads((save / f"results_twa_{t}.json").read_text()) for t in ("one", "two"))
    assert two["train_start"] == "mean" and two["basis"] == "span"
    for what in ("start", "final"):
        assert two[what]["test_loss_bn"] == pytest.approx(one[what]["test_loss_bn"], rel=1e-9)
        assert two[what]["test_acc_bn"] == one[what]["test_acc_bn"]
    assert torch.allclose(params2, params1, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def zoo_launch(both_launches):
    tmp, (_, stdout), audit = both_launches
    return tmp, stdout, audit


def test_networks_that_leave_parameters_unused_train_under_torchrun(zoo_launch):
    """Which networks need DDP's search for unused parameters is found by the networks
    themselves (a meta-device forward, or layers that drop branches), not by a list: nasnet's
    adapters and stochastic depth's dropped blocks, which failed at the second step before."""
    from tiny_models import tiny_nasnet
    tmp, stdout, audit = zoo_launch
    assert stdout.count("=> DDP finds unused parameters") == 7, stdout[-3000:]  # 4 + the step runs
    assert "stochastic depth" in stdout and "parameter tensors take no part" in stdout
    nasnet = tiny_nasnet()
    unused = utils.unused_parameters(nasnet.train(), (2, 3, 32, 32))
    assert unused and all(".fit." in name for name in unused)
    assert utils.unused_parameters(models.build("resnet8").train(), (2, 3, 32, 32)) == []
    for run, folder in ((Z, "straight"), (Z + 5, "nasnet")):
        params = final_params(audit, run)  # both ranks equal, and trained
        results = json.loads((tmp / folder / "results_sgd.json").read_text())
        assert torch.isfinite(params).all() and results["final"]["test_acc"] >= 0
    # stochastic depth's draws agree over the processes: the subspace runs kept in step
    for run, name in ((Z + 3, "results_pbfgs.json"), (Z + 4, "results_psgd.json")):
        final_params(audit, run)
        assert json.loads((tmp / "straight" / name).read_text())["final"]["test_loss"] > 0


def test_torchrun_resume_equals_the_straight_run(zoo_launch):
    """Stopped after epoch 1 and resumed to 2 under torchrun: bit for bit the run that went
    straight to 2 (every process's generators, stochastic depth's among them, restored)."""
    tmp, _, audit = zoo_launch
    assert torch.equal(final_params(audit, Z), final_params(audit, Z + 2))
    straight, resumed = (utils.load_state(str(tmp / d / "2.pt")) for d in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    ckpt = torch.load(tmp / "resumed" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng"]["processes"]) == 2


def test_a_signal_to_one_process_stops_both_at_one_step_and_the_resume_is_bit_for_bit(zoo_launch):
    """SIGTERM to rank 1 alone during a step inside epoch 1: both processes stop after that step
    with one checkpoint of it (the processes agree at the step's end), and the resumed run ends
    with the samples and parameters of the run never stopped."""
    tmp, zoo, audit = zoo_launch
    # (the audit asserts in each process that the run stopped; rank 0 alone prints)
    assert ("::: rank 0 stopped by SIGTERM during epoch 1; checkpoint.pt holds the run after 1 "
            "epochs and 2 batches of the next") in zoo, zoo[-3000:]
    straight, resumed = tmp / "steps", tmp / "steps_stopped"
    assert utils.available_samples(str(straight)) == utils.available_samples(str(resumed)) == \
        [0, 1, 2, 3]  # 3 batches an epoch: steps 2, 4 and 6
    for k in range(4):
        assert (straight / f"{k}.pt").read_bytes() == (resumed / f"{k}.pt").read_bytes(), k
    assert torch.equal(final_params(audit, Z + 7), final_params(audit, Z + 9))
    taken = json.loads((resumed / "results_sgd.json").read_text())["samples"]
    assert [(t["sample"], t["epoch"], t["batch"], t["step"]) for t in taken] == \
        [(0, 0, None, 0), (1, 0, 1, 2), (2, 1, 0, 4), (3, 1, 2, 6)]


def test_each_process_keeps_its_own_generators(zoo_launch):
    """The probe asserted in each process that its saved generators come back; the draws of
    the two processes differ (each its own stream, not rank 0's copy)."""
    _, _, audit = zoo_launch
    p0, p1 = (torch.load(audit / f"params_rank{r}_{Z + 6}.pt", weights_only=True)
              for r in (0, 1))
    assert not torch.equal(p0, p1)


def test_resume_with_another_number_of_processes_is_refused(zoo_launch, data_args, capsys,
                                                            monkeypatch):
    """A checkpoint of 2 processes resumed by one: one line, exit 2, nothing written."""
    import tiny_models
    import train_sgd
    for name, fn in tiny_models.TINY.items():
        monkeypatch.setitem(models._REGISTRY, name, fn)
    tmp, _, _ = zoo_launch
    folder = tmp / "resumed"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        utils.run_main(train_sgd.main, [*data_args, *ZOO, "--arch", "tiny_stochasticdepth",
                                        "--lr", "0.05", "--epochs", "3", "--save-dir",
                                        str(folder), "--resume"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 processes and this run has 1" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
