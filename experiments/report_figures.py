"""The report's figures: every seed a point (an 'x' where it stalled) over the medians."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import utils  # noqa: E402  (atomic writes)
from report_rules import EVALUATIONS  # noqa: E402
from report_runs import final, median, values  # noqa: E402


def figure_modules():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    return plt, Line2D


def seed_points(ax, xs, runs, key, color, filled, is_stalled):
    """Every seed a point at ``xs``: 'o' (filled or hollow) when it trained, 'x' when it stalled."""
    points = {True: ([], []), False: ([], [])}
    for x, run in zip(xs, runs):
        points[is_stalled(run)][0].append(x)
        points[is_stalled(run)][1].append(run["final"][key])
    if points[True][0]:
        ax.scatter(*points[True], marker="x", color=color, s=30, lw=1.2, zorder=3)
    if points[False][0]:
        ax.scatter(*points[False], marker="o", s=14, zorder=3, linewidths=0.9,
                   facecolors=color if filled else "white", edgecolors=color)


def seed_legend(Line2D):
    return [Line2D([], [], marker="o", ls="", color="0.3", ms=4, label="a seed (trained)"),
            Line2D([], [], marker="x", ls="", color="0.3", ms=6, label="a seed (stalled)")]


def sizes_figure(table, noise, seeds, seeds_for, sizes, path, is_stalled):
    """Test accuracy against subspace size at ``noise``: DLDR P-SGD and P-BFGS and the random
    basis, both evaluations (filled / solid: as the authors evaluate; hollow / dashed: BatchNorm
    re-estimated), every seed of ``seeds_for(k)`` a point ('x' when it stalled) and the medians
    joined by a line; SGD's median over ``seeds``."""
    plt, Line2D = figure_modules()
    from matplotlib.ticker import FixedLocator
    fig, ax = plt.subplots(figsize=(10, 4.4))
    series = [("pbfgs", "P-BFGS, DLDR basis", "tab:red"), ("psgd", "P-SGD, DLDR basis", "tab:blue"),
              ("psgd_random", "P-SGD, random basis", "tab:gray")]
    slots = len(series) * len(EVALUATIONS)
    # the series side by side around each size, over a third of the gap between sizes
    ordered = sorted(sizes)
    step = 0.33 * min([b - a for a, b in zip(ordered, ordered[1:])] or [4]) / slots
    handles = []
    for m, (method, label, color) in enumerate(series):
        for i, (key, how) in enumerate(EVALUATIONS):
            dx = (len(EVALUATIONS) * m + i - (slots - 1) / 2) * step
            xs = [k + dx for k in sizes]
            runs = {k: [table[noise, s][f"{method}_k{k}"] for s in seeds_for(k)] for k in sizes}
            medians = [median([r["final"][key] for r in runs[k]]) for k in sizes]
            seed_points(ax, [x for x, k in zip(xs, sizes) for _ in runs[k]],
                        [r for k in sizes for r in runs[k]], key, color, i == 0, is_stalled)
            handles += ax.plot(xs, medians, "-" if i == 0 else "--", color=color, lw=1.2,
                               label=f"{label} ({how}), median")
    sgd = values(table, noise, seeds, "sgd", final("test_acc"))
    handles.append(ax.axhline(median(sgd), color="k", lw=1, label="SGD, all parameters, final, "
                                                                   "median"))
    ax.xaxis.set_major_locator(FixedLocator(sizes))  # directions are whole numbers
    ax.set(xlabel="subspace size (directions)", ylabel="final test accuracy (%)", ylim=(0, 102),
           title=f"DIGITS, label noise {noise}: accuracy against subspace size")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles + seed_legend(Line2D), fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    utils.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def methods_figure(table, noises, seeds, methods, path, is_stalled):
    """The methods side by side: final test accuracy at every noise level, both evaluations
    (solid bars: as the authors evaluate; hatched: BatchNorm re-estimated), each bar the median
    over the seeds with every seed a point on it ('x' when it stalled). ``methods``: (results
    name, label, colour)."""
    plt, Line2D = figure_modules()
    fig, ax = plt.subplots(figsize=(12, 4.4))
    width = 0.84 / (2 * len(methods))
    for m, (name, label, color) in enumerate(methods):
        for e, (key, how) in enumerate(EVALUATIONS):
            got = [(i, [table[n, s][name] for s in seeds if name in table[n, s]])
                   for i, n in enumerate(noises)]
            got = [(i, runs) for i, runs in got if runs]  # the random control: noise 0 only
            xs = [i + (2 * m + e - len(methods)) * width + width / 2 for i, _ in got]
            ax.bar(xs, [median([r["final"][key] for r in runs]) for _, runs in got], width,
                   color=color, alpha=0.55 if e else 0.8, hatch="//" if e else None,
                   edgecolor="white" if e else color, label=label if e == 0 else None)
            seed_points(ax, [x for x, (_, runs) in zip(xs, got) for _ in runs],
                        [r for _, runs in got for r in runs], key, "k", e == 0, is_stalled)
    ax.set_xticks(range(len(noises)), [f"label noise {n}" for n in noises])
    ax.set(ylabel="final test accuracy (%)", ylim=(0, 105),
           title="DIGITS: the methods on the same trajectories, median over the seeds and every "
                 "seed (hatched: BatchNorm re-estimated)")
    ax.grid(alpha=0.3, axis="y")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + seed_legend(Line2D), fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    utils.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
