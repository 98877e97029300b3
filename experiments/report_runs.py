"""The runs of experiments/digits.sh as the report reads them: their results files, which of
them did not train (the stall rule), the settings they were made with, and the figures' format
(a median with its range over the seeds)."""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dldr import stall  # noqa: E402  (the subspace runs' stall rule)
from reuse import NOT_DEFINING, SCRIPTS, with_defaults  # noqa: E402  (how runs are compared)

# digits.sh's sensitivity runs (not the paper's setting): P-SGD at the main size and TWA on the
# head samples at this lr, their results files tagged with it
SENSITIVITY_LR = "0.5"


def load(path):
    """A results file, or exit 2 with one line naming it when it is damaged (digits.sh, seeing
    it cannot be read, runs its job again)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"error: {path}: cannot be read ({type(e).__name__}: {str(e)[:120]}); run "
              "experiments/digits.sh, which makes it again", file=sys.stderr)
        sys.exit(2)


def median(values):
    return statistics.median(values) if values else float("nan")


def fmt(values, digits=1):
    """'median (lowest–highest)' over the seeds, or the value for a single seed."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def fmt_g(values):
    """fmt for figures of any scale (gradient norms, distances): three significant digits."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def spread(values, digits=1):
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}" if values else "n/a"


def final(key):
    return lambda r: r["final"][key]


def start(key):
    return lambda r: r["start"][key]


def best(r):
    return max(e["test_acc"] for e in r["epochs"][1:]) if len(r["epochs"]) > 1 else r["final"]["test_acc"]


def final_train_loss(run):
    """The training loss the stall rule reads: the final weights' (one pass over the training set
    at the end), or the last epoch's mean for a file written before it was measured."""
    final = (run.get("final") or {}).get("train_loss")
    if final is not None:
        return final
    losses = [e["train_loss"] for e in run.get("epochs", []) if "train_loss" in e]
    return losses[-1] if losses else None


def stalled(run, num_classes):
    """Whether a run did not train: its diagnostics' ``stalled`` where it has them (the subspace
    runs; an inconclusive None counts as trained, and the report says where the rule cannot
    tell); otherwise the same rule (``dldr.stall``) on its final training loss, where the run has
    one (SGD); a run without one (SWA, which trains nothing) has not stalled."""
    diagnostics = run.get("diagnostics") or {}
    if "stalled" in diagnostics:
        return bool(diagnostics["stalled"])
    corrupt = float((run.get("args") or {}).get("corrupt") or 0.0)
    return bool(stall.stalled(final_train_loss(run), num_classes, corrupt))


def run_names(noise, noises, sizes):
    """The results each (noise, seed) folder holds, the sensitivity runs apart: the random
    control at the first noise level only."""
    names = ["sgd"] + [f"{m}_k{k}" for k in sizes for m in ("psgd", "pbfgs")]
    names += ["psgd_late", "pbfgs_late", "twa", "swa", "twa_late", "swa_late", "twa_b128",
              "swa_early_stop"]
    if noise == noises[0]:
        names += [f"psgd_random_k{k}" for k in sizes]
    return names


def sensitivity_names(main_k):
    """digits.sh's sensitivity runs (not the paper's setting): (P-SGD's, TWA's) results names."""
    return f"psgd_k{main_k}_lr{SENSITIVITY_LR}", f"twa_lr{SENSITIVITY_LR}"


def collect(runs_dir, seeds, noises, names):
    """{(noise, seed): {name: results}} of the runs ``names(noise, seed)`` and the results files
    missing or unfinished."""
    table, missing = {}, []
    for noise in noises:
        for seed in seeds:
            folder = os.path.join(runs_dir, f"noise{noise}_seed{seed}")
            found = {}
            for name in names(noise, seed):
                path = os.path.join(folder, f"results_{name}.json")
                r = load(path) if os.path.exists(path) else {}
                if "final" in r:
                    found[name] = r
                else:
                    missing.append(path)
            table[noise, seed] = found
    return table, missing


def refuse_missing(missing):
    if missing:
        raise SystemExit(f"error: {len(missing)} results files missing or unfinished, first "
                         f"{missing[0]}; run experiments/digits.sh to produce them")


PER_FOLDER = {"randomseed", "corrupt"}  # the arguments that differ between folders by design


def check_settings(table):
    """The report describes one setting: each run name must have been made with the same
    arguments in every folder (a flag a record lacks, added to the scripts since, at its
    default: as digits.sh reuses runs), and each folder's runs with its own seed and noise.
    Anything else is an error naming the run, the folders and the arguments that differ."""
    first = {}
    for (noise, seed), found in sorted(table.items()):
        folder = f"noise{noise}_seed{seed}"
        for name, run in sorted(found.items()):
            args = run.get("args", {})
            own = {"randomseed": seed, "corrupt": noise}
            for key, want in own.items():
                if key in args and float(args[key]) != float(want):
                    raise SystemExit(f"error: {folder}/results_{name}.json was made with --{key} "
                                     f"{args[key]}, not the folder's {want}; run "
                                     "experiments/digits.sh to make it again")
            if run.get("method") not in SCRIPTS:
                raise SystemExit(f"error: {folder}/results_{name}.json: method "
                                 f"{run.get('method')!r} is none of the scripts' "
                                 f"({', '.join(SCRIPTS)}); run experiments/digits.sh to make "
                                 "it again")
            defining = {k: v for k, v in with_defaults(args, SCRIPTS[run["method"]]).items()
                        if k not in NOT_DEFINING | PER_FOLDER}
            if name not in first:
                first[name] = folder, defining
                continue
            where, reference = first[name]
            differ = sorted(k for k in set(defining) | set(reference)
                            if defining.get(k) != reference.get(k))
            if differ:
                raise SystemExit(
                    f"error: results_{name}.json was made with other settings in {folder} than in "
                    f"{where}: " + ", ".join(f"{k} {reference.get(k)!r} / {defining.get(k)!r}"
                                             for k in differ)
                    + "; the report does not mix runs of different settings: run "
                    "experiments/digits.sh with one setting to make them again")


def values(table, noise, seeds, name, get):
    return [get(table[noise, s][name]) for s in seeds if name in table[noise, s]]


def kernels_of(run):
    """The CPU side of a run as the report names it: 'AVX2 kernels (pinned), 1 thread, on CPU'."""
    k = run.get("kernels")
    if not isinstance(k, dict):
        return "kernels not recorded"
    threads = k.get("threads")
    return (f"{k.get('cpu_capability')} kernels ({'pinned' if k.get('pinned') else 'native'}), "
            f"{threads} thread{'s' if threads != 1 else ''}, on {k.get('cpu')}")


def provenance(table):
    torches, commits, cpus = set(), set(), set()
    for found in table.values():
        for r in found.values():
            torches.add(r.get("torch", "unknown"))
            commit = r.get("git_commit") or "unknown"
            commits.add(commit[:7] + (" with uncommitted changes" if commit.endswith("-dirty") else ""))
            cpus.add(kernels_of(r))
    return (f"torch {', '.join(sorted(torches))}; code {', '.join(sorted(commits))}; "
            f"{'; '.join(sorted(cpus))}")


