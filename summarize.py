"""Print a table of the runs in a save dir: each results file's final test accuracy (as the authors'
scripts evaluate it, and with BatchNorm statistics re-estimated on the training data), its best
epoch, final training loss and time.

    python summarize.py SAVE_DIR
"""
import glob
import json
import os
import sys

ORDER = ["sgd", "psgd", "pbfgs", "twa", "swa", "psgd_span", "pbfgs_span", "psgd_random",
         "pbfgs_random"]
LABELS = {"sgd": "SGD (all parameters)", "psgd": "P-SGD (DLDR basis)", "pbfgs": "P-BFGS (DLDR basis)",
          "twa": "TWA (span, from mean)", "swa": "SWA (mean, BN re-est.)",
          "psgd_span": "P-SGD (span basis)", "pbfgs_span": "P-BFGS (span basis)",
          "psgd_random": "P-SGD (random basis)", "pbfgs_random": "P-BFGS (random basis)"}


def load_runs(save_dir):
    runs = {}
    for path in glob.glob(os.path.join(save_dir, "results_*.json")):
        tag = os.path.basename(path)[len("results_"):-len(".json")]
        with open(path) as f:
            runs[tag] = json.load(f)
    return runs


def final_bn(run):
    """The final accuracy with re-estimated BatchNorm statistics, or None for older runs."""
    return run.get("final", {}).get("test_acc_bn")


def table(save_dir):
    runs = load_runs(save_dir)
    if not runs:
        raise SystemExit(f"error: no results_*.json in {save_dir}")
    lines = [f"{'method':<24}{'epochs':>7}{'final acc':>11}{'final, BN re-est.':>19}"
             f"{'best acc':>10}{'train loss':>12}{'time s':>9}"]
    for tag in sorted(runs, key=lambda t: ORDER.index(t) if t in ORDER else len(ORDER)):
        epochs = runs[tag]["epochs"]
        last = epochs[-1]
        best = max(e["test_acc"] for e in epochs)
        total = sum(e.get("time", 0.0) for e in epochs)
        loss = last.get("train_loss", float("nan"))
        bn = final_bn(runs[tag])
        bn_text = f"{bn:.2f}%" if bn is not None else "n/a"
        lines.append(f"{LABELS.get(tag, tag):<24}{last['epoch']:>7}{last['test_acc']:>10.2f}%"
                     f"{bn_text:>19}{best:>9.2f}%{loss:>12.4f}{total:>9.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python summarize.py SAVE_DIR")
    print(table(sys.argv[1]))
