"""Print a table of the runs in a save dir: each results file's final test accuracy (as the authors'
scripts evaluate it, and with BatchNorm statistics re-estimated on the training data), its best
epoch, final training loss and time. A results file made from other samples than those in the
folder now is marked stale, a subspace run whose diagnostics say it stalled (docs/files.md) is
marked STALLED with its figures below, one without a final evaluation UNFINISHED (with why, when
it recorded it: a non-finite loss); one that cannot be read is named in one line, the others
shown. A trajectory sampled by step is said so in a last line, with its steps.

    python summarize.py SAVE_DIR
"""
import glob
import json
import os
import sys

from dldr.records import stale_reason

ORDER = ["sgd", "psgd", "pbfgs", "twa", "swa", "psgd_span", "pbfgs_span", "psgd_random",
         "pbfgs_random", "twa_dldr", "twa_random"]
LABELS = {"sgd": "SGD (all parameters)", "psgd": "P-SGD (DLDR basis)", "pbfgs": "P-BFGS (DLDR basis)",
          "twa": "TWA (span, from mean)", "swa": "SWA (mean, BN re-est.)",
          "psgd_span": "P-SGD (span basis)", "pbfgs_span": "P-BFGS (span basis)",
          "psgd_random": "P-SGD (random basis)", "pbfgs_random": "P-BFGS (random basis)",
          "twa_dldr": "TWA (DLDR basis)", "twa_random": "TWA (random basis)"}


def split_tag(tag):
    """(the method and basis part of a results file's name, its --output-tag or None):
    'psgd_random_k5' -> ('psgd_random', 'k5'), 'swa_tail' -> ('swa', 'tail')."""
    known = [k for k in LABELS if tag == k or tag.startswith(k + "_")]
    if not known:
        return tag, None
    base = max(known, key=len)
    return base, tag[len(base) + 1:] or None


def label(tag):
    """A readable name of the run in results_TAG.json: 'SWA (mean, BN re-est.), tag tail'."""
    base, suffix = split_tag(tag)
    name = LABELS.get(base, base)
    return f"{name}, tag {suffix}" if suffix else name


def sort_key(tag):
    base, suffix = split_tag(tag)
    return (ORDER.index(base) if base in ORDER else len(ORDER), base, suffix or "")


def load_runs(save_dir, problems=None):
    """{tag: record} of the results_TAG.json files with at least one epoch; a file that is not
    JSON or holds no epoch is left out, with one line naming it in ``problems`` (a list), or on
    stderr when none is given."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(save_dir, "results_*.json"))):
        tag = os.path.basename(path)[len("results_"):-len(".json")]
        try:
            with open(path) as f:
                run = json.load(f)
            if not (isinstance(run, dict) and isinstance(run.get("epochs"), list) and run["epochs"]
                    and all(isinstance(e, dict) and "epoch" in e and "test_acc" in e
                            for e in run["epochs"])):
                raise ValueError("no epoch recorded (a run stopped before its first one?)")
        except (OSError, ValueError) as e:
            why = f"not valid JSON ({e})" if isinstance(e, json.JSONDecodeError) else str(e)
            line = f"skipped {path}: {why}"
            if problems is None:
                print(line, file=sys.stderr)
            else:
                problems.append(line)
            continue
        runs[tag] = run
    return runs


def stale_runs(save_dir, runs):
    """{tag: why} of the runs whose recorded samples (``sample_fingerprint``) are not the samples
    in ``save_dir`` now: runs on a trajectory that was replaced since."""
    digests, stale = {}, {}
    for tag, run in runs.items():
        why = stale_reason(save_dir, run.get("sample_fingerprint"), digests)
        if why:
            stale[tag] = why
    return stale


def final_bn(run):
    """The final accuracy with re-estimated BatchNorm statistics, or None for older runs."""
    return (run.get("final") or {}).get("test_acc_bn")


def figure(d, key):
    """A diagnostics figure as the STALLED and STALL? lines print it ("n/a" where there is none)."""
    return "n/a" if not isinstance(d.get(key), (int, float)) else f"{d[key]:.4g}"


def stall(run):
    """Why a subspace run's ``diagnostics`` call it stalled (its final training loss and the
    figures beside it), or None: not stalled, or an older file without diagnostics."""
    d = run.get("diagnostics")
    if not (isinstance(d, dict) and d.get("stalled")):
        return None
    return (f"final training loss {figure(d, 'final_train_loss')} >= "
            f"{figure(d, 'stall_threshold')} ({d.get('rule', 'the stall rule')}); first projected "
            f"gradient norm {figure(d, 'first_projected_grad_norm')}, max distance from the start "
            f"{figure(d, 'max_distance')}, the trajectory's reach {figure(d, 'trajectory_reach')}")


def stall_unknown(run):
    """Why the stall rule could not judge a finished subspace run (labels too noisy), or None."""
    d = run.get("diagnostics")
    if not (isinstance(d, dict) and "stalled" in d and d["stalled"] is None and "final" in run):
        return None
    return (f"inconclusive: with --corrupt {d.get('corrupt')} the best loss the labels allow, "
            f"{figure(d, 'best_loss')}, is nearly a guess's {figure(d, 'chance_loss')} (final "
            f"training loss {figure(d, 'final_train_loss')})")


def load(save_dir):
    """(runs, stale, problems) of ``save_dir``: ``load_runs``, ``stale_runs`` and the lines
    about unreadable files; read once for the table and the plots."""
    problems = []
    runs = load_runs(save_dir, problems)
    return runs, stale_runs(save_dir, runs), problems


def unfinished(run):
    """Why a run has no final evaluation ("stopped: ..." when it recorded why, as a non-finite
    loss does), or None for a finished run."""
    if "final" in run:
        return None
    return f"stopped: {run['stopped']}" if run.get("stopped") else "no final evaluation (stopped, " \
        "or still running)"


def table(save_dir, loaded=None):
    """The summary table of ``save_dir``'s runs (``loaded``: what ``load`` returned, or read)."""
    runs, stale, problems = loaded or load(save_dir)
    if not runs:
        raise SystemExit("\n".join(problems + [f"error: no readable results_*.json in {save_dir}"]))
    width = max(24, *(len(label(t)) + 2 for t in runs))
    lines = [f"{'method':<{width}}{'epochs':>7}{'final acc':>11}{'final, BN re-est.':>19}"
             f"{'best acc':>10}{'train loss':>12}{'time s':>9}"]
    for tag in sorted(runs, key=sort_key):
        epochs = runs[tag]["epochs"]
        last = epochs[-1]
        best = max(e["test_acc"] for e in epochs)
        total = sum(e.get("time", 0.0) for e in epochs)
        loss = last.get("train_loss", float("nan"))
        bn = final_bn(runs[tag])
        bn_text = f"{bn:.2f}%" if bn is not None else "n/a"
        lines.append(f"{label(tag):<{width}}{last['epoch']:>7}{last['test_acc']:>10.2f}%"
                     f"{bn_text:>19}{best:>9.2f}%{loss:>12.4f}{total:>9.1f}"
                     + ("  STALLED" if stall(runs[tag]) else "")
                     + ("  STALL?" if stall_unknown(runs[tag]) else "")
                     + ("  UNFINISHED" if unfinished(runs[tag]) else "")
                     + ("  STALE" if tag in stale else ""))
    lines += [f"STALLED: results_{tag}.json: {stall(runs[tag])}"
              for tag in sorted(runs, key=sort_key) if stall(runs[tag])]
    lines += [f"STALL?: results_{tag}.json: {stall_unknown(runs[tag])}"
              for tag in sorted(runs, key=sort_key) if stall_unknown(runs[tag])]
    lines += [f"UNFINISHED: results_{tag}.json: {unfinished(runs[tag])}"
              for tag in sorted(runs, key=sort_key) if unfinished(runs[tag])]
    lines += [f"STALE: results_{tag}.json: {why}" for tag, why in sorted(stale.items())]
    steps = by_step(runs.get("sgd"))
    return "\n".join(lines + ([steps] if steps else []) + problems)


def by_step(sgd):
    """The line that says how the SGD run's samples were taken, when by step (else None):
    'SGD samples 0..12 taken by step: every 1000 steps (rule steps), steps 0..12000, 5005
    batches an epoch; the last at epoch 2, batch 1989'."""
    plan, taken = (sgd or {}).get("sampling"), (sgd or {}).get("samples")
    if not (isinstance(plan, dict) and isinstance(taken, list) and taken):
        return None
    first, last = taken[0], taken[-1]
    return (f"SGD samples {first['sample']}..{last['sample']} taken by step: every "
            f"{plan.get('every_steps')} steps (rule {plan.get('rule')}), steps {first['step']}.."
            f"{last['step']}, {plan.get('batches_per_epoch')} batches an epoch; the last at "
            f"epoch {last['epoch']}, batch {last['batch']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python summarize.py SAVE_DIR")
    print(table(sys.argv[1]))
