"""Peak memory and time of the streaming DLDR basis, and its agreement with the in-memory basis.

    python bench/streaming_basis.py                      # 81 WRN-28-10 samples (~11.8 GB on disk)
    python bench/streaming_basis.py --samples 21 --arch resnet56 --keep --dir /tmp/samples

Writes --samples samples of --arch (a random walk from the initial weights along a few fixed
directions plus fresh noise per step, so the trajectory is low-rank-ish like SGD's) into --dir (a
temporary folder, deleted afterwards unless --keep), then builds a --components-direction streaming
basis in a fresh subprocess and reports its peak resident set (VmHWM) against the issue's target,
basis + 2 GB. Then a smaller case (--compare-arch, whose samples fit in memory) is built both ways,
the streaming one with a small working set so that it spans many blocks, and compared.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import models  # noqa: E402
import utils  # noqa: E402

GB = 1e9


def status(key):
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def write_walk(arch, folder, n, seed=0, directions=8):
    """Samples 0..n-1: initial weights + a random walk in a few fixed directions + fresh noise."""
    torch.manual_seed(seed)
    model = models.build(arch, 10)
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    fixed = {name: torch.randn(directions, *p.shape, generator=g) for name, p in params.items()}
    with torch.no_grad():
        for e in range(n):
            utils.save_sample(model, folder, e)
            coeffs = torch.randn(directions, generator=g)  # this step; the walk is their sum
            for name, p in params.items():
                step = torch.tensordot(coeffs, fixed[name], 1)
                p.add_(1e-3 * (step + 0.3 * torch.randn(p.shape, generator=g)))
    return model


def measure(folder, arch, n, k, threads):
    """In a fresh process: peak resident set and time of the streaming basis of folder's samples."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {ROOT!r})
sys.path.insert(0, {os.path.join(ROOT, 'bench')!r})
import models, utils
from streaming_basis import status
torch.set_num_threads({threads})
model = models.build({arch!r}, 10)
paths = [utils.sample_path({folder!r}, e) for e in range({n})]
base = status("VmRSS")
start = time.time()
basis, ratios = utils.streaming_subspace_basis(paths, model, {k}, arch={arch!r})
print(json.dumps({{"seconds": time.time() - start, "peak": status("VmHWM"), "base": base,
                  "basis": basis.numel() * basis.element_size(),
                  "explained": ratios.sum().item()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if out.returncode:
        sys.exit(f"the measured subprocess failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(folder, arch, n, k, working_bytes):
    """In-memory basis against the streaming one with a small working set (many blocks)."""
    model = models.build(arch, 10)
    paths = [utils.sample_path(folder, e) for e in range(n)]
    start = time.time()
    ref, ref_ratios = utils.subspace_basis(utils.load_sample_matrix(folder, model, 0, n, arch), k)
    in_memory_s = time.time() - start
    start = time.time()
    ours, ratios = utils.streaming_subspace_basis(paths, model, k, arch=arch,
                                                  working_bytes=working_bytes)
    streaming_s = time.time() - start
    ours = ours.double()
    # ||B1^T B1 - B2^T B2||_2, which bounds every entry of the D x D projector difference (too
    # large to form): with [B1; B2]^T = QR it is the largest |eigenvalue| of R1 R1^T - R2 R2^T.
    _, r = torch.linalg.qr(torch.cat([ours, ref]).T)
    middle = r[:, :k] @ r[:, :k].T - r[:, k:] @ r[:, k:].T
    gap = torch.linalg.eigvalsh(middle).abs().max().item()
    return {"dim": ref.shape[1], "in_memory_s": in_memory_s, "streaming_s": streaming_s,
            "projector_gap": gap,
            "max_row_diff": (ours - ref).abs().max().item(),
            "max_ratio_diff": (ratios - ref_ratios).abs().max().item()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=utils.positive_int, default=81)
    p.add_argument("--arch", default="wrn28_10")
    p.add_argument("--components", type=utils.positive_int, default=40)
    p.add_argument("--dir", default=None,
                   help="folder for the samples (default: a temporary one, deleted afterwards)")
    p.add_argument("--keep", action="store_true",
                   help="keep the samples this run wrote (default: delete them afterwards)")
    p.add_argument("--reuse", action="store_true",
                   help="use the samples already in --dir instead of writing them")
    p.add_argument("--compare-arch", default="resnet20")
    p.add_argument("--compare-samples", type=utils.positive_int, default=81)
    p.add_argument("--compare-working-bytes", type=utils.positive_int, default=16 << 20)
    p.add_argument("--threads", type=utils.positive_int, default=min(2, torch.get_num_threads()))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.dir or tempfile.mkdtemp(prefix="streaming_basis_")
    created = args.dir is None or not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        print(f"# {args.samples} {args.arch} samples, {args.components} directions, torch "
              f"{torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
              f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM",
              flush=True)
        if not args.reuse:
            start = time.time()
            write_walk(args.arch, folder, args.samples)
            print(f"wrote samples to {folder} in {time.time() - start:.0f} s", flush=True)
        size = sum(os.path.getsize(utils.sample_path(folder, e)) for e in range(args.samples))
        r = measure(folder, args.arch, args.samples, args.components, args.threads)
        over = r["peak"] - r["basis"]
        print(f"samples on disk     {size / GB:.2f} GB")
        print(f"basis (float32)     {r['basis'] / GB:.2f} GB")
        print(f"peak RSS            {r['peak'] / GB:.2f} GB (process before the call: "
              f"{r['base'] / GB:.2f} GB)")
        print(f"peak - basis        {over / GB:.2f} GB: "
              f"{'within' if over <= 2 * GB else 'NOT within'} basis + 2 GB")
        print(f"time                {r['seconds']:.0f} s; explained variance {r['explained']:.4f}",
              flush=True)
        compare_dir = os.path.join(folder, "compare")
        os.makedirs(compare_dir, exist_ok=True)
        write_walk(args.compare_arch, compare_dir, args.compare_samples, seed=1)
        c = compare(compare_dir, args.compare_arch, args.compare_samples,
                    min(args.components, args.compare_samples - 1), args.compare_working_bytes)
        print(f"smaller case: {args.compare_samples} {args.compare_arch} samples ({c['dim']:,} "
              f"parameters), working set {args.compare_working_bytes / 2**20:.0f} MiB: in-memory "
              f"{c['in_memory_s']:.1f} s, streaming {c['streaming_s']:.1f} s; projector gap "
              f"{c['projector_gap']:.1e} (spectral norm), max row difference "
              f"{c['max_row_diff']:.1e}, ratios {c['max_ratio_diff']:.1e}: "
              f"{'<=' if c['projector_gap'] <= 1e-6 else 'NOT <='} 1e-6")
    finally:
        shutil.rmtree(os.path.join(folder, "compare"), ignore_errors=True)
        if not args.keep and not args.reuse:  # only what this run wrote: --dir may hold more
            for e in range(args.samples):
                if os.path.exists(utils.sample_path(folder, e)):
                    os.remove(utils.sample_path(folder, e))
            if created and not os.listdir(folder):
                os.rmdir(folder)


if __name__ == "__main__":
    main()
