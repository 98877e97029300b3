"""The time --basis-file saves: a streamed basis built (and saved) once, then reused, in one run.

    python bench/basis_file.py                                  # 41 WRN-16-4 samples, k = 20
    python bench/basis_file.py --arch wrn28_10 --samples 81 --components 40

Writes --samples samples of --arch into a temporary folder (bench/streaming_basis.py's random
walk), then for the DLDR and the span basis: builds the streamed basis with --basis-file (the
samples' fingerprint, the two or three passes over the files, the save), and builds it again with
the same --basis-file (the fingerprint and the load). Prints both times and their ratio.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
import utils  # noqa: E402
from streaming_basis import write_walk  # noqa: E402


def timed(kind, samples, k, model, path):
    start = time.perf_counter()
    basis = utils.build_basis(kind, samples, k, model, torch.device("cpu"), streaming=True,
                              basis_file=path)
    return time.perf_counter() - start, basis


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="wrn16_4")
    p.add_argument("--samples", type=int, default=41)
    p.add_argument("--components", type=int, default=20)
    p.add_argument("--dir", default=None, help="where to write the samples (default: a temp dir)")
    args = p.parse_args(argv)
    folder = args.dir or tempfile.mkdtemp(prefix="basis_file_")
    try:
        write_walk(args.arch, folder, args.samples)
        model = models.build(args.arch, 10)
        samples = utils.Trajectory(folder, 0, args.samples, arch=args.arch)
        start = time.perf_counter()
        samples.fingerprint()
        hashing = time.perf_counter() - start
        dim = sum(p.numel() for p in model.parameters())
        print(f"{args.samples} samples of {args.arch} ({dim:,} parameters, "
              f"{sum(os.path.getsize(x) for x in samples.paths) / 1e9:.2f} GB); fingerprint of "
              f"the files {hashing:.2f} s")
        print("| basis | built and saved | reused from --basis-file | ratio |")
        print("|---|---:|---:|---:|")
        for kind, k in (("dldr", args.components), ("span", args.samples)):
            path = os.path.join(folder, f"basis_{kind}.pt")
            samples._fingerprint = None  # each build hashes the files, as a run does
            built, first = timed(kind, samples, k, model, path)
            samples._fingerprint = None
            reused, again = timed(kind, samples, k, model, path)
            assert "loaded" in again.file_note and torch.equal(first.matrix, again.matrix)
            print(f"| {kind}, {k} directions, streamed | {built:.1f} s | {reused:.2f} s | "
                  f"{built / reused:.0f}x |")
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
