"""BatchNorm statistics re-estimated on the training data: no weight changes, the statistics are
the data's, models without BatchNorm are left alone, and the runs record both final evaluations."""
import copy
import json

import pytest
import torch
import torch.nn as nn

import models
import utils
from conftest import DIGITS_SUB, run_here


def test_reestimated_mean_is_the_inputs_mean_and_no_weight_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 2)).double()
    with torch.no_grad():  # statistics and weights far from the defaults
        for b in (model[0].running_mean, model[2].running_var):
            b.fill_(7.0)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    shift = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64).view(1, 1, 3, 1, 1)
    inputs = torch.randn(6, 16, 3, 8, 8, dtype=torch.float64) * 3 + shift
    loader = [(x, torch.zeros(16, dtype=torch.int64)) for x in inputs]  # equal batches
    weights = copy.deepcopy([p.detach().clone() for p in model.parameters()])
    model.eval()
    rng = torch.get_rng_state()
    assert utils.reestimate_bn(model, loader)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    # The first layer sees the inputs themselves: its mean is theirs, per channel, in float64.
    torch.testing.assert_close(model[0].running_mean, inputs.mean((0, 1, 3, 4)), rtol=1e-12, atol=0)
    assert not model.training  # its mode is restored
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's draws do not move the run's RNG
    assert model[0].momentum == 0.1  # momentum restored after the cumulative average


def test_a_model_without_batchnorm_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    before = copy.deepcopy(model.state_dict())
    loader = [(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.int64))]
    assert not utils.reestimate_bn(model, loader)
    assert utils.evaluate_reestimated(model, model, loader, loader, None) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_statistics_are_put_back_unless_kept_and_both_loader_paths_agree():
    torch.manual_seed(0)
    data = utils.load_digits(True).subset(96)
    test = utils.load_digits(False).subset(64)
    cpu = torch.device("cpu")
    model = models.build("resnet8", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test_loader = utils.make_loader(test, 64, cpu, False)
    memory, dataloader = (utils.bn_loader(data, 32, cpu, kind, workers=0)
                          for kind in ("memory", "dataloader"))
    utils.evaluate_reestimated(model, model, test_loader, memory, None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    kept = utils.evaluate_reestimated(model, model, test_loader, memory, None, keep=True)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert any(not torch.equal(v, before[k]) for k, v in stats.items())
    twin = models.build("resnet8", 10)
    twin.load_state_dict(before)
    assert utils.evaluate_reestimated(twin, twin, test_loader, dataloader, None, keep=True) == kept
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in stats.items())


def test_runs_record_both_final_evaluations_and_the_flag_keeps_the_statistics(digits_pbfgs):
    # The plain run (DIGITS_PBFGS, two epochs); the flagged one stops after the first, to compare
    assert run_here("train_pbfgs.py", *DIGITS_SUB, "--epochs", "1", "--batch-size", "128",
                    "--save-dir", digits_pbfgs, "--output-tag", "bn", "--bn-reestimate") == 0
    plain, flagged = (json.load(open(digits_pbfgs / f"results_pbfgs{t}.json")) for t in ("", "_bn"))
    for run in (plain, flagged):
        assert set(run["final"]) >= {"test_acc", "test_loss", "test_acc_bn", "test_loss_bn"}
        assert run["final"]["test_acc"] == run["epochs"][-1]["test_acc"]  # the authors' evaluation
        assert set(run["start"]) >= {"test_acc", "test_acc_bn"}  # and the restart sample's
    # The flag changes no step: same trajectory, same evaluations; it adds per-epoch figures.
    assert plain["start"] == flagged["start"] and len(flagged["epochs"]) == 2
    for a, b in zip(plain["epochs"], flagged["epochs"]):
        assert a["coords"] == b["coords"] and a["test_acc"] == b["test_acc"]
    assert flagged["epochs"][-1]["test_acc_bn"] == flagged["final"]["test_acc_bn"]
    assert "test_acc_bn" not in plain["epochs"][-1]
    # Only the flag's saved model keeps the re-estimated statistics.
    test_loader = utils.make_loader(utils.load_digits(False), 128, torch.device("cpu"), False)
    for name, run, key in (("PBFGS.pt", plain, "test_acc"), ("PBFGS_bn.pt", flagged, "test_acc_bn")):
        model = models.build("resnet8", 10)
        model.load_state_dict(torch.load(digits_pbfgs / name, weights_only=True))
        assert utils.evaluate(model, test_loader)[1] == pytest.approx(run["final"][key], abs=1e-9)
    sgd = json.load(open(digits_pbfgs / "results_sgd.json"))
    assert sgd["final"]["test_acc"] == sgd["epochs"][-1]["test_acc"]
