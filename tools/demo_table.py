"""Write README's demo table from a demo folder's results, under the headers of the table the demo
prints: the final accuracy as the authors' scripts evaluate it, with BatchNorm statistics
re-estimated, and the best epoch's accuracy; above it, the code, kernels and CPU that made it.

    python tools/demo_table.py demo_runs/digits_resnet20_seed1            # print the table
    python tools/demo_table.py demo_runs/digits_resnet20_seed1 --update   # replace it in README.md
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import readme_block  # noqa: E402
import summarize  # noqa: E402

ROWS = [("sgd", "SGD, all {params:,} parameters"), ("psgd", "P-SGD, {k} DLDR directions"),
        ("pbfgs", "P-BFGS, {k} DLDR directions"), ("psgd_random", "P-SGD, {k} random directions")]


def made_by(runs):
    """Which code, torch, kernels, threads and CPU made the runs (one line), or a line saying
    that they differ."""
    seen = {(r.get("git_commit"), r.get("torch"), json.dumps(r.get("kernels"), sort_keys=True))
            for r in runs.values()}
    if len(seen) != 1:
        return "Made by several commits or kernel sets: rerun `./run.sh demo --fresh`."
    commit, torch_version, kernels = seen.pop()
    k = json.loads(kernels) or {}
    pinned = " (`DLDR_KERNELS=avx2`)" if k.get("pinned") else " (`DLDR_KERNELS=native`)"
    commit = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "") if commit else commit
    return (f"Made by commit {commit}, torch {torch_version}, {k.get('cpu_capability')} "
            f"kernels{pinned}, {k.get('threads')} threads, on {k.get('cpu')}:")


def table(folder):
    runs = summarize.load_runs(folder)
    params = runs["sgd"]["num_params"]
    # The headers of the table the demo prints (summarize.py)
    lines = [made_by({tag: runs[tag] for tag, _ in ROWS}), "",
             "| method | epochs | final acc | final, BN re-est. | best acc |",
             "|---|---:|---:|---:|---:|"]
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
