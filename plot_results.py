"""Plots of a save dir's runs, written as PNG files beside the results.

    python plot_results.py SAVE_DIR [--summary]   (--summary: summarize.py's table first)

- curves.png: test accuracy and training loss against epoch for SGD, P-SGD, P-BFGS, TWA, SWA
  and the random-basis controls found in the save dir;
- explained_variance.png: the explained-variance ratio of the principal directions of the samples
  the DLDR runs built their basis from (the whole trajectory without such runs), per direction and
  cumulative, with their size k marked;
- trajectory.png: the SGD samples and the subspace runs projected on the trajectory's top two
  principal directions, and a 3-D view on the top three.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402

import summarize  # noqa: E402
import utils  # noqa: E402
from dldr.sampling import describe_steps, steps_by_sample  # noqa: E402

STYLE = {"sgd": ("SGD", "k", "-"), "psgd": ("P-SGD", "tab:blue", "-"),
         "pbfgs": ("P-BFGS", "tab:red", "-"), "twa": ("TWA", "tab:green", "-"),
         "swa": ("SWA", "tab:purple", "-"),
         "psgd_span": ("P-SGD, span basis", "tab:blue", "-."),
         "pbfgs_span": ("P-BFGS, span basis", "tab:red", "-."),
         "psgd_random": ("P-SGD, random basis", "tab:gray", ":"),
         "pbfgs_random": ("P-BFGS, random basis", "tab:brown", ":")}
# Every curve has markers, so that a run of one epoch (one training-loss point) and a control
# lying under another curve (random bases stay at a guess's accuracy) can still be seen
MARKERS = {"psgd_random": "x", "pbfgs_random": "x"}


def style(tag):
    return STYLE.get(tag, (tag, None, "--"))


def plot_curves(runs):
    """Test accuracy and training loss per epoch; each run's final accuracy with re-estimated
    BatchNorm statistics marked (a diamond) at its last epoch."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for tag in sorted(runs, key=lambda t: list(STYLE).index(t) if t in STYLE else 99):
        epochs = runs[tag]["epochs"]
        label, color, ls = style(tag)
        marker = MARKERS.get(tag, "o")
        ax_acc.plot([e["epoch"] for e in epochs], [e["test_acc"] for e in epochs], ls, color=color,
                    label=label, marker=marker, ms=4, zorder=3 if tag in MARKERS else 2)
        bn = summarize.final_bn(runs[tag])
        if bn is not None:
            ax_acc.plot([epochs[-1]["epoch"]], [bn], "D", color=color, ms=6, mfc="none",
                        label=f"{label}, final with BatchNorm re-estimated")
        trained = [e for e in epochs if "train_loss" in e]
        ax_loss.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], ls,
                     color=color, label=label, marker=marker, ms=4)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rows(samples, epochs, wanted):
    """The samples (float64) of the epochs ``wanted``, ``samples`` holding ``epochs`` (the folder's,
    which need not start at 0 nor be contiguous); None when the folder lacks one of them."""
    where = {e: i for i, e in enumerate(epochs)}
    if any(e not in where for e in wanted):
        return None
    return samples[[where[e] for e in wanted]].double()


def trajectory_pca(save_dir):
    """(samples (n, D), their epochs, model, run record) of the SGD run, or None without
    run.json."""
    path = os.path.join(save_dir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    model = utils.new_model(record["arch"], record.get("datasets"), record["num_classes"])
    epochs = utils.available_samples(save_dir)
    samples = torch.stack([utils.param_vector_from_state(
        utils.load_state(utils.sample_path(save_dir, e)), model) for e in epochs])
    return samples, epochs, model, record


def basis_samples(runs, epochs):
    """(the epochs of the samples the DLDR runs built their basis from, their sizes k, the runs'
    labels) when the runs share one sample range present in the folder; else (``epochs``, [],
    []): the whole trajectory."""
    used = {}
    for tag, run in runs.items():
        a = run.get("args") or {}
        if run.get("basis", a.get("basis")) == "dldr" and "params_start" in a:
            key = tuple(range(a["params_start"], a["params_end"], a.get("params_step") or 1))
            used.setdefault(key, []).append((run.get("n_components", a.get("n_components")), tag))
    if len(used) != 1 or not set(next(iter(used))) <= set(epochs):
        return list(epochs), [], []
    (chosen, sizes), = used.items()
    return list(chosen), sorted({k for k, _ in sizes if k}), [style(t)[0] for _, t in sizes]


def plot_explained_variance(samples, epochs=None, runs=None):
    """The explained variance of the principal directions of the samples the DLDR runs used (the
    whole trajectory when they share no range), their sizes k marked."""
    epochs = list(range(len(samples))) if epochs is None else list(epochs)
    used, sizes, methods = basis_samples(runs or {}, epochs)
    samples = rows(samples, epochs, used)
    k = min(len(samples) - 1, 30)
    _, ratios = utils.subspace_basis(samples, k)
    ratios = ratios.numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(1, k + 1), ratios, color="tab:blue", label="per direction")
    ax.plot(range(1, k + 1), ratios.cumsum(), "o-", color="tab:red", ms=3, label="cumulative")
    for size in sizes:
        ax.axvline(size + 0.5, color="k", ls="--", lw=1,
                   label=f"k = {size}, the basis of {', '.join(methods)}")
    taken = ((runs or {}).get("sgd") or {}).get("samples")  # by step: their steps too
    steps = describe_steps(steps_by_sample(taken), [used[0], used[-1]])
    which = (f"samples {utils.describe_epochs(used)}{steps}, the DLDR basis's" if sizes else
             f"samples {utils.describe_epochs(used)}{steps}")
    ax.set(xlabel="principal direction", ylabel="explained variance ratio", ylim=(0, 1.02),
           title=f"SGD trajectory: {which} ({len(samples)} samples)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig, ratios


def final_model_path(save_dir, tag, run):
    """The final model a subspace run with results_TAG.json saved (PSGD_k5.pt for psgd_k5)."""
    return os.path.join(save_dir, utils.outputs_of(run.get("method", tag.split("_")[0]), tag).model)


def subspace_path(run, samples, model, epochs, final=None):
    """The run's per-epoch parameters, rebuilt as start + P^T coords (P recomputed exactly); for
    SWA, the one point it is: the samples' mean. Samples are taken by their epoch (``epochs``:
    those of the rows of ``samples``); None when the folder lacks one the run used. A run started
    from a file's weights (--resume-weights) starts at no sample: its start is its ``final``
    model's parameters (float64) less P^T of its last coordinates, so that its path ends on the
    model it saved (exactly where its steps stay in the subspace; P-BFGS's --alpha leaves it);
    None without that model."""
    a = run["args"]
    used = rows(samples, epochs, range(a["params_start"], a["params_end"],
                                       a.get("params_step", 1)))
    if used is None:
        return None
    if run.get("method") == "swa":
        return used.mean(0, keepdim=True)
    coords = torch.tensor([e["coords"] for e in run["epochs"] if "coords" in e], dtype=torch.float64)
    if not len(coords):
        return None
    k = coords.shape[1]
    if a["basis"] == "random":
        basis = utils.random_basis(samples.shape[1], k, a["randomseed"])
    elif a["basis"] == "span":
        basis = utils.span_basis(used)
    else:
        basis, _ = utils.subspace_basis(used, k)
    if run.get("resumed_from_weights"):
        return None if final is None else final.reshape(-1) + (coords - coords[-1]) @ basis
    begin = run.get("train_start", a["params_start"])
    start = used.mean(0) if begin == "mean" else rows(samples, epochs, [begin])
    return None if start is None else start.reshape(-1) + coords @ basis


def final_weights(save_dir, tag, run, model):
    """The parameters (float64) of the final model of a --resume-weights run, or None."""
    path = final_model_path(save_dir, tag, run) if save_dir else None
    if not (run.get("resumed_from_weights") and path and os.path.isfile(path)):
        return None
    return utils.param_vector_from_state(utils.load_state(path), model).double()


def plot_trajectory(samples, runs, model, epochs, save_dir=None):
    basis, _ = utils.subspace_basis(samples, min(3, len(samples) - 1))
    mean = samples.double().mean(0)
    project = lambda w: ((w.double() - mean) @ basis.T).numpy()
    sgd = project(samples)
    fig = plt.figure(figsize=(11, 4.5))
    ax2 = fig.add_subplot(1, 2, 1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d") if basis.shape[0] >= 3 else None
    paths = {"sgd": sgd}
    for tag, run in runs.items():
        if tag != "sgd" and "args" in run and ("coords" in run["epochs"][-1]
                                                or run.get("method") == "swa"):
            path = subspace_path(run, samples, model, epochs,
                                 final_weights(save_dir, tag, run, model))
            if path is not None:
                paths[tag] = project(path)
    for tag, xyz in paths.items():
        label, color, ls = style(tag)
        point = len(xyz) == 1  # SWA: a point, not a path
        ax2.plot(xyz[:, 0], xyz[:, 1], ls, marker="P" if point else "o", ms=9 if point else 2.5,
                 color=color, label=label)
        if ax3 is not None:
            ax3.plot(xyz[:, 0], xyz[:, 1], xyz[:, 2], ls, marker="o", ms=2, color=color, label=label)
    ax2.plot(sgd[0, 0], sgd[0, 1], "g*", ms=12,  # the folder's first sample, by its epoch
             label="initialisation (sample 0)" if epochs[0] == 0 else
             f"first sample ({epochs[0]}.pt)")
    ax2.set(xlabel="PC 1", ylabel="PC 2", title="Trajectories on the top two directions")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    if ax3 is not None:
        ax3.set(xlabel="PC 1", ylabel="PC 2", zlabel="PC 3", title="Top three directions")
    fig.tight_layout()
    return fig, paths


def plot_save_dir(save_dir, loaded=None):
    """Write every plot the save dir allows (``loaded``: what summarize.load returned, or
    read); returns the paths written."""
    runs, stale, problems = loaded or summarize.load(save_dir)
    if loaded is None:
        for line in problems:  # an unreadable file: one line on stderr, left out
            print(line, file=sys.stderr)
    runs = {tag: run for tag, run in runs.items() if tag not in stale}
    for tag, why in stale.items():  # not the samples' runs
        print(f"skipped results_{tag}.json: stale, {why}", file=sys.stderr)
    if not runs:
        raise utils.UsageError(f"{save_dir}: no results_*.json to plot; run the scripts first")
    written = []

    def save(fig, name):
        path = os.path.join(save_dir, name)
        utils.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        written.append(path)

    save(plot_curves(runs), "curves.png")
    trajectory = trajectory_pca(save_dir)
    if trajectory is not None and len(trajectory[0]) >= 3:
        samples, epochs, model, _ = trajectory
        save(plot_explained_variance(samples, epochs, runs)[0], "explained_variance.png")
        save(plot_trajectory(samples, runs, model, epochs, save_dir)[0], "trajectory.png")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot the runs of a DLDR save dir (PNG files beside them)")
    p.add_argument("save_dir")
    p.add_argument("--summary", action="store_true",
                   help="print summarize.py's table of the runs first (one process for both)")
    args = p.parse_args(argv)
    loaded = summarize.load(args.save_dir) if args.summary else None  # read once for both
    if args.summary:
        print(summarize.table(args.save_dir, loaded))
    for path in plot_save_dir(args.save_dir, loaded):
        print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except utils.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
