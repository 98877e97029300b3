"""Write docs/architectures.md's table of architectures from the registry (names, families, counts).

    python tools/model_table.py            # print the table
    python tools/model_table.py --update   # rewrite it in docs/architectures.md
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
import readme_block  # noqa: E402



def count(name, classes):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = models.build(name, classes)
    return sum(p.numel() for p in model.parameters())


def table():
    rows = ["| `--arch` | family | parameters (10 classes) | parameters (100 classes) |",
            "|---|---|---:|---:|"]
    for name in sorted(models.names(), key=lambda n: (models.family(n), count(n, 100))):
        rows.append(f"| `{name}` | {models.family(name)} | {count(name, 10):,} | {count(name, 100):,} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update", action="store_true",
                   help="rewrite the table in docs/architectures.md")
    args = p.parse_args()
    text = table()
    if not args.update:
        print(text)
        return
    readme_block.replace("models", text, path="docs/architectures.md")

if __name__ == "__main__":
    main()
