"""bench/overhead.py at toy size: the scripts' training steps against bare loops of the same
maths, with the table, the profile and the JSON it writes."""
import contextlib
import json
import os
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import overhead  # noqa: E402


def test_tiny_overhead_benchmark_writes_its_table_profile_and_figures(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    overhead.main(["--tiny", "--repeats", "1", "--threads", "1", "--top", "40", "--json", str(out)])
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["machine"]["threads"] == 1 and figures["machine"]["tiny"]
    assert list(figures["methods"]) == list(overhead.METHODS)
    for name, f in figures["methods"].items():
        # The bare loop is the same maths: from the same start, the same weights to the last bit
        assert f["identical"], name
        assert f["ours_s"] > 0 and f["bare_s"] > 0
        assert f["ours_s"] == min(f["rounds"]["ours"]) and f["bare_s"] == min(f["rounds"]["bare"])
        assert f["ratio"] == pytest.approx(f["ours_s"] / f["bare_s"])
        k = f", k={f['k']}" if f["k"] else ""
        assert (f"| {overhead.TITLES[name]} ({f['batch']}{k}) | {f['steps']} x 1 | "
                f"{f['ours_s']:.4f} | {f['bare_s']:.4f} | {f['ratio']:.3f} | yes |") in printed
        # The script's step does more than the maths (its meters, checks): the profile names it
        assert f["profile"] and all(row["calls_per_step"] > 0 for row in f["profile"])
        assert f"{overhead.TITLES[name]}: what the script's step adds" in printed
    # The meters' accuracy (argmax) is an operator the bare loops do not call
    for name in overhead.METHODS:
        assert "aten::argmax" in [row["entry"] for row in figures["methods"][name]["profile"]]


def test_bare_pbfgs_takes_the_steps_of_pbfgs():
    """The inline P-BFGS (the benchmark's reference) against dldr.optim.PBFGS on a small model:
    the same weights after three steps with line searches, BatchNorm buffers put back."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))
    with torch.no_grad():
        model[3].weight.mul_(30)  # steep: the first steps overshoot and the line search shrinks
    flat = overhead.utils.FlatParameters(model)
    P = overhead.utils.random_basis(flat.data.numel(), 4, seed=1).float()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(32, 6, generator=g) * 3, torch.randint(3, (32,), generator=g))
               for _ in range(3)]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    overhead.bare_pbfgs(model, flat, P, batches)
    bare = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    opt = overhead.utils.PBFGS(flat.params, P, buffers=model.buffers())
    for x, y in batches:
        def closure():
            flat.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
            return loss
        opt.step(closure)
    assert sum(opt.search_steps) > 0  # the line search shrank some step
    assert not torch.equal(bare["0.weight"], start["0.weight"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, bare[key]), key


def test_the_losses_are_checked_for_nan_and_inf_at_the_progress_lines_and_the_last_batch():
    """The finiteness check kept out of the steps: a bad loss stops the epoch at the next
    progress line (or the last batch), naming it, and all the losses of the epoch are seen."""
    from dldr.progress import EpochProgress, NonFiniteLoss
    for bad_step, bad, stop in ((3, float("nan"), 5), (6, float("inf"), 9), (0, -float("inf"), 0),
                                (9, float("nan"), 9), (None, 0.0, None)):
        progress = EpochProgress(0, 10, 5)
        with pytest.raises(NonFiniteLoss) if stop is not None else contextlib.nullcontext() as e:
            for i in range(10):
                loss = torch.tensor(bad if i == bad_step else 1.5 + i)
                progress.check_finite(loss, i)
                assert stop is None or i < stop
        if stop is not None:
            assert str(e.value) == f"non-finite loss at epoch 0, by step {stop}"
        else:
            assert progress.unchecked == []  # the last batch checked them all


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--steps", "0"), ("--k", "0"),
                                         ("--batch-size", "0"), ("--threads", "-1"),
                                         ("--json", "{tmp}/missing/o.json"), ("--json", "{tmp}")])
def test_bad_arguments_are_one_error_line_before_any_timing(tmp_path, capsys, flag, value):
    """Issue 33: these were tracebacks (or, for --json, an error after minutes of timing)."""
    with pytest.raises(SystemExit) as stop:
        overhead.main(["--tiny", "--methods", "sgd", flag, value.format(tmp=tmp_path)])
    err = capsys.readouterr()
    assert stop.value.code == 2 and err.out == ""  # nothing measured
    last = err.err.splitlines()[-1]
    assert f": error: argument {flag}: " in last or f": error: {flag} " in last, last
    assert "Traceback" not in err.err
