"""Write README's demo table from a demo folder's results: the final accuracy as the authors'
scripts evaluate it, with BatchNorm statistics re-estimated, and the best epoch.

    python tools/demo_table.py demo_runs/digits_resnet20_seed1            # print the table
    python tools/demo_table.py demo_runs/digits_resnet20_seed1 --update   # replace it in README.md
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import readme_block  # noqa: E402
import summarize  # noqa: E402

ROWS = [("sgd", "SGD, all {params:,} parameters"), ("psgd", "P-SGD, {k} DLDR directions"),
        ("pbfgs", "P-BFGS, {k} DLDR directions"), ("psgd_random", "P-SGD, {k} random directions")]


def table(folder):
    runs = summarize.load_runs(folder)
    params = runs["sgd"]["num_params"]
    lines = ["| method | epochs | final, as the authors evaluate | final, BatchNorm re-estimated "
             "| best epoch |", "|---|---:|---:|---:|---:|"]
    for tag, label in ROWS:
        run = runs[tag]
        k = run.get("args", {}).get("n_components")
        best = max(e["test_acc"] for e in run["epochs"])
        lines.append(f"| {label.format(params=params, k=k)} | {run['epochs'][-1]['epoch']} | "
                     f"{run['final']['test_acc']:.2f}% | {run['final']['test_acc_bn']:.2f}% | "
                     f"{best:.2f}% |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--update", action="store_true", help="rewrite the table in README.md")
    args = p.parse_args()
    text = table(args.folder)
    if not args.update:
        print(text)
        return
    readme_block.replace("demo", text, path="README.md")

if __name__ == "__main__":
    main()
