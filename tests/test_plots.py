"""plot_results.py draws its curves from the results files and writes valid PNG images."""
import json
import os

import matplotlib.image
import numpy as np
import torch

import models
import plot_results
import summarize
import utils


def _save_dir(tmp_path):
    torch.manual_seed(0)
    model = models.build("resnet20", 10)
    for e in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * (e + 1) * torch.randn_like(p))
        utils.save_sample(model, str(tmp_path), e)
    json.dump({"arch": "resnet20", "num_classes": 10}, open(tmp_path / "run.json", "w"))
    sgd = {"method": "sgd", "epochs": [{"epoch": e, "test_acc": 10.0 + 15 * e, "train_loss": 2.0 / (e + 1)}
                                       for e in range(6)]}
    json.dump(sgd, open(tmp_path / "results_sgd.json", "w"))
    for tag, basis in (("psgd", "dldr"), ("psgd_random", "random")):
        rng = np.random.default_rng(len(tag))
        epochs = [{"epoch": e, "test_acc": float(rng.uniform(10, 90)),
                   "train_loss": float(rng.uniform(0.1, 2)), "coords": rng.normal(size=3).tolist()}
                  for e in range(4)]
        epochs[0]["coords"] = [0.0, 0.0, 0.0]
        run = {"method": "psgd", "basis": basis, "epochs": epochs,
               "final": {"test_acc": epochs[-1]["test_acc"], "test_acc_bn": 77.0 + len(tag)},
               "args": {"basis": basis, "params_start": 1, "params_end": 5, "randomseed": 1}}
        json.dump(run, open(tmp_path / f"results_{tag}.json", "w"))
    return tmp_path


def test_plots_are_valid_images_drawn_from_the_results(tmp_path):
    folder = _save_dir(tmp_path)
    written = plot_results.plot_save_dir(str(folder))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == [
        "curves.png", "explained_variance.png", "trajectory.png"]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500
        assert image[..., :3].std() > 0.05  # something was drawn

    runs = summarize.load_runs(str(folder))
    fig = plot_results.plot_curves(runs)
    acc_ax, loss_ax = fig.axes
    labels = [line.get_label() for line in acc_ax.lines]
    assert labels == ["SGD", "P-SGD", "P-SGD, final with BatchNorm re-estimated",
                      "P-SGD, random basis", "P-SGD, random basis, final with BatchNorm re-estimated"]
    curves = [line for line in acc_ax.lines if "final" not in line.get_label()]
    for line, tag in zip(curves, ["sgd", "psgd", "psgd_random"]):
        assert list(line.get_ydata()) == [e["test_acc"] for e in runs[tag]["epochs"]]
        assert list(line.get_xdata()) == [e["epoch"] for e in runs[tag]["epochs"]]
    marks = [line for line in acc_ax.lines if "final" in line.get_label()]
    for line, tag in zip(marks, ["psgd", "psgd_random"]):  # at the last epoch, the re-estimated
        assert list(line.get_xdata()) == [runs[tag]["epochs"][-1]["epoch"]]
        assert list(line.get_ydata()) == [runs[tag]["final"]["test_acc_bn"]]
    ticks = acc_ax.get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # epochs on whole-number ticks
    for line, tag in zip(loss_ax.lines, ["sgd", "psgd", "psgd_random"]):
        assert list(line.get_ydata()) == [e["train_loss"] for e in runs[tag]["epochs"]]
    # The control is seen: its own colour and markers, also where it has one training-loss point
    runs["psgd_random"]["epochs"] = runs["psgd_random"]["epochs"][:2]
    acc_ax, loss_ax = plot_results.plot_curves(runs).axes
    for ax in (acc_ax, loss_ax):
        [control] = [x for x in ax.lines if x.get_label() == "P-SGD, random basis"]
        [psgd] = [x for x in ax.lines if x.get_label() == "P-SGD"]
        assert control.get_marker() == "x" and control.get_color() != psgd.get_color()


def test_explained_variance_and_trajectory_use_the_samples(tmp_path):
    folder = _save_dir(tmp_path)
    samples, epochs, model, _ = plot_results.trajectory_pca(str(folder))
    assert samples.shape == (6, sum(p.numel() for p in model.parameters()))
    assert epochs == list(range(6))
    _, ratios = plot_results.plot_explained_variance(samples)
    assert len(ratios) == 5 and abs(ratios.sum() - 1) < 1e-9
    runs = summarize.load_runs(str(folder))
    # With the runs: the samples of their DLDR basis (1..4), its size marked, named in the title
    runs["psgd"]["n_components"] = 3
    fig, ratios = plot_results.plot_explained_variance(samples, epochs, runs)
    _, expected = utils.subspace_basis(samples[1:5], 3)
    assert np.allclose(ratios, expected.numpy(), atol=1e-12)
    ax = fig.axes[0]
    assert ax.get_title() == "SGD trajectory: samples 1..4, the DLDR basis's (4 samples)"
    assert [x.get_label() for x in ax.lines][-1] == "k = 3, the basis of P-SGD"
    _, paths = plot_results.plot_trajectory(samples, runs, model, epochs)
    assert paths["sgd"].shape == (6, 3)
    # Every subspace run starts at its restart sample (params_start = 1).
    for tag in ("psgd", "psgd_random"):
        assert np.allclose(paths[tag][0], paths["sgd"][1], atol=1e-9)
        assert paths[tag].shape == (4, 3)


def test_samples_are_matched_by_epoch_in_a_folder_without_sample_0(tmp_path):
    folder = _save_dir(tmp_path)
    os.remove(folder / "0.pt")  # samples 1..5: position i holds epoch i + 1
    swa = {"method": "swa", "epochs": [{"epoch": 0, "test_acc": 50.0}],
           "final": {"test_acc": 50.0, "test_acc_bn": 60.0},
           "args": {"params_start": 2, "params_end": 5}}
    json.dump(swa, open(folder / "results_swa.json", "w"))
    samples, epochs, model, _ = plot_results.trajectory_pca(str(folder))
    assert epochs == [1, 2, 3, 4, 5]
    runs = summarize.load_runs(str(folder))
    fig, paths = plot_results.plot_trajectory(samples, runs, model, epochs)
    # The reference, by epoch from the files: SWA is the mean of samples 2, 3 and 4
    by_epoch = {e: utils.param_vector_from_state(utils.load_state(str(folder / f"{e}.pt")), model)
                .double() for e in epochs}
    basis, _ = utils.subspace_basis(samples, 3)
    swa_point = ((sum(by_epoch[e] for e in (2, 3, 4)) / 3 - samples.double().mean(0)) @ basis.T)
    assert np.allclose(paths["swa"][0], swa_point.numpy(), atol=1e-9)
    # the subspace runs start at sample 1 (params_start), the folder's first row here
    for tag in ("psgd", "psgd_random"):
        assert np.allclose(paths[tag][0], paths["sgd"][0], atol=1e-9)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "first sample (1.pt)" in labels and "initialisation (sample 0)" not in labels
    # a run whose samples are not all in the folder is not drawn from others
    swa["args"]["params_start"] = 0
    json.dump(swa, open(folder / "results_swa.json", "w"))
    _, paths = plot_results.plot_trajectory(samples, summarize.load_runs(str(folder)), model,
                                            epochs)
    assert "swa" not in paths


def test_plot_without_results_is_one_clear_error(tmp_path):
    import pytest
    with pytest.raises(utils.UsageError, match="no results"):
        plot_results.plot_save_dir(str(tmp_path))


def test_summary_flag_prints_summarize_table_before_the_plots(tmp_path, capsys, monkeypatch):
    """The demo's last step: one process prints summarize.py's table, then writes the plots,
    reading the results files and fingerprinting the samples once for both."""
    folder = _save_dir(tmp_path)
    reads, fingerprints = [], []
    load_runs, stale_runs = summarize.load_runs, summarize.stale_runs
    monkeypatch.setattr(summarize, "load_runs",
                        lambda *a, **k: reads.append(a) or load_runs(*a, **k))
    monkeypatch.setattr(summarize, "stale_runs",
                        lambda *a, **k: fingerprints.append(a) or stale_runs(*a, **k))
    plot_results.main([str(folder), "--summary"])
    assert len(reads) == 1 and len(fingerprints) == 1
    out = capsys.readouterr().out
    table = summarize.table(str(folder))
    assert out.startswith(table) and out.index(table) < out.index("wrote ")
    assert "curves.png" in out.split(table, 1)[1]


def test_a_resume_weights_run_is_drawn_from_its_weights_to_its_saved_model(tmp_path):
    """Issue 33: a run started from a file's weights starts at no sample; its path ends on the
    model it saved and starts where those weights were (not at --params_start's sample)."""
    folder = _save_dir(tmp_path)
    samples, epochs, model, _ = plot_results.trajectory_pca(str(folder))
    used = samples[1:5].double()
    basis, _ = utils.subspace_basis(used, 3)
    torch.manual_seed(1)
    w0 = samples[3].double() + 0.05 * torch.randn(samples.shape[1], dtype=torch.float64)
    coords = [[0.0, 0.0, 0.0], [0.3, -0.1, 0.2], [0.5, 0.4, -0.2]]
    final = w0 + torch.tensor(coords[-1], dtype=torch.float64) @ basis
    torch.nn.utils.vector_to_parameters(final.float(), model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / "PSGD_rw.pt")
    run = {"method": "psgd", "basis": "dldr", "resumed_from_weights": "elsewhere/start.pt",
           "epochs": [{"epoch": e, "test_acc": 50.0, "coords": c} for e, c in enumerate(coords)],
           "final": {"test_acc": 50.0, "test_acc_bn": 60.0},
           "args": {"basis": "dldr", "params_start": 1, "params_end": 5, "randomseed": 1}}
    json.dump(run, open(folder / "results_psgd_rw.json", "w"))
    runs = summarize.load_runs(str(folder))
    _, paths = plot_results.plot_trajectory(samples, runs, model, epochs, str(folder))
    pca, _ = utils.subspace_basis(samples, 3)
    project = lambda w: ((w - samples.double().mean(0)) @ pca.T).numpy()
    assert np.allclose(paths["psgd_rw"][-1], project(final.float().double()), atol=1e-5)
    assert np.allclose(paths["psgd_rw"][0], project(w0), atol=1e-5)
    assert not np.allclose(paths["psgd_rw"][0], paths["sgd"][1], atol=1e-3)  # not sample 1
    # Without its model (deleted, or the run unfinished): not drawn rather than drawn wrong
    os.remove(folder / "PSGD_rw.pt")
    _, paths = plot_results.plot_trajectory(samples, runs, model, epochs, str(folder))
    assert "psgd_rw" not in paths
