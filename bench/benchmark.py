"""Per-epoch time of SGD, P-BFGS and P-SGD (ResNet-20, synthetic CIFAR-sized data), fast path against
the DataLoader fp32 eager path, and the DLDR basis against scikit-learn's PCA, all in one run.

    python bench/benchmark.py --device cuda                      # the issue's full-size setting
    python bench/benchmark.py --device cpu --train-size 2048 --test-size 512   # a quick CPU check
    python bench/benchmark.py --device cpu --train-size 2048 --test-size 512 --methods pbfgs \
        --pbfgs-paths        # and P-BFGS on FlatParameters views against plain parameters

Each figure is the median of --repeats timed epochs after one untimed warm-up epoch (which absorbs
torch.compile and cuDNN autotuning). An epoch is its training steps plus the test-set evaluation.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import models  # noqa: E402
import train_pbfgs  # noqa: E402
import train_psgd  # noqa: E402
import train_sgd  # noqa: E402
import utils  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(run_epoch, device, repeats):
    run_epoch()  # warm-up: compilation, autotuning, allocator
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run_epoch()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_method(method, path, train, test, device, repeats, k):
    """Median seconds per epoch (training steps plus the test evaluation) of one method, on the
    fast path (data on the device; on CUDA also bf16, channels_last, compiled) or the reference
    path (torchvision transforms in a DataLoader, fp32, eager)."""
    fast = path == "fast"
    cuda = fast and device.type == "cuda"
    batch = 1024 if method == "pbfgs" else 128
    kind, workers = ("memory", 0) if fast else ("dataloader", 0 if device.type == "cpu" else 8)
    amp = "bf16" if cuda else None
    torch.manual_seed(0)
    model = models.build("resnet20", 10).to(device)
    train_loader = utils.make_loader(train, batch, device, True, kind=kind, workers=workers)
    test_loader = utils.make_loader(test, 256, device, False, kind=kind, workers=workers)
    begin_step = utils.step_marker(device, cuda)
    progress = lambda: utils.EpochProgress(0, len(train_loader), 10 ** 9)  # noqa: E731
    if method == "sgd":
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if cuda else model
        opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=False)

        def train_epoch():
            train_sgd.train_epoch(step_model, train_loader, opt, scaler, progress(), amp,
                                  begin_step, cuda, after_step=lambda i: None)
    else:
        flat = utils.FlatParameters(model)
        basis = utils.random_basis(flat.data.numel(), k, seed=0).to(device, torch.float32)
        step_model = torch.compile(model) if cuda else model
        if method == "pbfgs":
            opt = utils.PBFGS(flat.params, basis, buffers=model.buffers())

            def train_epoch():
                train_pbfgs.train_epoch(step_model, flat, opt, train_loader, progress(), 1, amp,
                                        begin_step)
        else:
            opt = torch.optim.SGD(flat.params, lr=1.0, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=False)

            def train_epoch():
                train_psgd.train_epoch(step_model, flat, basis, train_loader, opt, scaler,
                                       progress(), amp, begin_step)

    def epoch():
        train_epoch()
        utils.evaluate(step_model, test_loader, amp)
    return time_epochs(epoch, device, repeats)


class _PlainGradients:
    """train_pbfgs.train_epoch's ``flat`` for parameters that are not FlatParameters views: the
    closure's ``zero_grad()`` sets the gradients to None, as ``Optimizer.zero_grad()`` does."""

    def __init__(self, params):
        self.params = params

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def bench_pbfgs_paths(train, device, repeats, k, overhead_steps=5):
    """P-BFGS training epochs of ResNet-20 (fast data path, batch 1024) with the parameters as
    FlatParameters views into one buffer and as the model's own tensors, in the same run: one
    untimed warm-up epoch each, then ``repeats`` timed epochs of each, interleaved and in
    alternating order (views, plain, plain, views, ...) so that a change in the machine's load, or
    a cost of going second, hits both alike. Both start from the same weights and see the same
    batches (each loader has its own seeded generator), so they do the same work.

    Then the optimizer's own work per step, without the network: ``overhead_steps`` steps whose
    closure returns a fixed loss (every try rejected: max_search tries, each writing all weights).
    Returns {path: epoch seconds}, {path: overhead seconds per step} and whether the two paths
    ended with bit-identical weights."""
    cuda = device.type == "cuda"
    amp = "bf16" if cuda else None
    runs = {}
    for path in ("views", "plain"):
        torch.manual_seed(0)
        model = models.build("resnet20", 10).to(device)
        if path == "views":
            flat = utils.FlatParameters(model)
        else:
            flat = _PlainGradients(utils.trainable_parameters(model))
        dim = sum(p.numel() for p in flat.params)
        basis = utils.random_basis(dim, k, seed=0).to(device, torch.float32)
        opt = utils.PBFGS(flat.params, basis, buffers=model.buffers())
        loader = utils.make_loader(train, 1024, device, True, kind="memory", workers=0)
        step_model = torch.compile(model) if cuda else model
        begin_step = utils.step_marker(device, cuda)

        def epoch(step_model=step_model, flat=flat, opt=opt, loader=loader,
                  begin_step=begin_step):
            progress = utils.EpochProgress(0, len(loader), 10 ** 9)
            train_pbfgs.train_epoch(step_model, flat, opt, loader, progress, 1, amp, begin_step)
        runs[path] = (epoch, flat.params, opt, [])
    for epoch, *_ in runs.values():
        epoch()  # warm-up
    for r in range(repeats):
        for path in (("views", "plain") if r % 2 == 0 else ("plain", "views")):
            epoch, _, _, times = runs[path]
            sync(device)
            start = time.perf_counter()
            epoch()
            sync(device)
            times.append(time.perf_counter() - start)
    weights = [torch.cat([p.detach().reshape(-1) for p in params]) for _, params, _, _ in
               runs.values()]
    same = torch.equal(*weights)
    overhead = {}
    for path, (_, params, opt, _) in runs.items():
        fixed = torch.ones((), device=device)  # the gradients stay those of the last batch
        closure = lambda: fixed if torch.is_grad_enabled() else fixed + 1  # noqa: E731
        opt.step(closure)
        sync(device)
        start = time.perf_counter()
        for _ in range(overhead_steps):
            opt.step(closure)
        sync(device)
        overhead[path] = (time.perf_counter() - start) / overhead_steps
    return {path: run[3] for path, run in runs.items()}, overhead, same


def bench_basis(device, n_samples=81, k=40, repeats=3):
    """Our exact basis (on the device) against scikit-learn's default PCA (CPU) on the same samples."""
    from sklearn.decomposition import PCA

    dim = sum(p.numel() for p in models.build("resnet20", 10).parameters())
    g = torch.Generator().manual_seed(0)
    steps = torch.randn(n_samples, dim, generator=g) * torch.linspace(1, 0.05, n_samples)[:, None]
    samples = steps.cumsum(0)  # a random walk with shrinking steps, like a trajectory
    ours_t, ref_t = [], []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        basis, _ = utils.subspace_basis(samples.to(device), k)
        sync(device)
        ours_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        PCA(n_components=k).fit(samples.numpy())
        ref_t.append(time.perf_counter() - start)
    # Exactness: the same subspace as the full-SVD PCA.
    full = PCA(n_components=k, svd_solver="full").fit(samples.double().numpy())
    ref = torch.from_numpy(full.components_)
    b = basis.double().cpu()
    gap = torch.linalg.matrix_norm(b.T @ (b @ ref.T) - ref.T, ord=2).item()
    return statistics.median(ours_t), statistics.median(ref_t), gap


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-size", type=int, default=50000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-components", type=int, default=40)
    p.add_argument("--basis-samples", type=int, default=81,
                   help="samples of the basis timing (default: 81, the paper's 0..80)")
    p.add_argument("--methods", default="sgd,pbfgs,psgd",
                   help="comma-separated; empty (--methods \"\") times the basis only")
    p.add_argument("--pbfgs-paths", action="store_true",
                   help="also time P-BFGS training epochs with the parameters as FlatParameters "
                        "views and as plain tensors, interleaved in this run, and print the ratio")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = utils.load_synthetic(True, n_train=args.train_size)
    test = utils.load_synthetic(False, n_test=args.test_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# ResNet-20, synthetic {args.train_size}/{args.test_size}, {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    rows, out = [], {"device": name, "torch": torch.__version__, "train_size": args.train_size,
                     "test_size": args.test_size}
    for method in filter(None, args.methods.split(",")):
        ref = bench_method(method, "reference", train, test, device, args.repeats, args.n_components)
        fast = bench_method(method, "fast", train, test, device, args.repeats, args.n_components)
        rows.append((method, ref, fast))
        out[method] = {"reference_s": ref, "fast_s": fast, "speedup": ref / fast}
        print(f"  {method}: reference {ref:.3f} s/epoch, fast {fast:.3f} s/epoch", flush=True)
    if args.pbfgs_paths:
        times, overhead, same = bench_pbfgs_paths(train, device, args.repeats, args.n_components)
        v, q = statistics.median(times["views"]), statistics.median(times["plain"])
        pairs = [b / a for a, b in zip(times["views"], times["plain"])]
        out["pbfgs_paths"] = {"views_s": times["views"], "plain_s": times["plain"],
                              "views_median_s": v, "plain_median_s": q, "plain_over_views": q / v,
                              "pairwise_plain_over_views": pairs,
                              "step_overhead_s": overhead, "same_weights": same}
        spread = lambda t: (max(t) - min(t)) / statistics.median(t)  # noqa: E731
        print(f"  pbfgs paths (training epochs): FlatParameters views {v:.3f} s/epoch "
              f"(spread {spread(times['views']):.1%}), plain parameters {q:.3f} s/epoch "
              f"(spread {spread(times['plain']):.1%}), plain/views {q / v:.3f}x "
              f"(pairs {min(pairs):.3f}-{max(pairs):.3f}), bit-identical weights: {same}",
              flush=True)
        print("    views: " + ", ".join(f"{t:.3f}" for t in times["views"]) + " s; plain: "
              + ", ".join(f"{t:.3f}" for t in times["plain"]) + " s", flush=True)
        print(f"    the optimizer's own work per step (fixed loss, every try rejected, no "
              f"network): views {overhead['views'] * 1e3:.2f} ms, plain {overhead['plain'] * 1e3:.2f} ms",
              flush=True)
    ours, sk, gap = bench_basis(device, n_samples=args.basis_samples, k=args.n_components)
    out["basis"] = {"ours_s": ours, "sklearn_pca_s": sk, "speedup": sk / ours, "subspace_gap": gap}
    print()
    print("| method (batch) | DataLoader fp32 eager s/epoch | fast path s/epoch | speed-up |")
    print("|---|---:|---:|---:|")
    batches = {"sgd": 128, "pbfgs": 1024, "psgd": 128}
    for method, ref, fast in rows:
        print(f"| {method} ({batches[method]}) | {ref:.3f} | {fast:.3f} | {ref / fast:.2f}x |")
    print(f"| basis, {args.basis_samples} samples, k={args.n_components} | sklearn PCA {sk:.3f} s | "
          f"ours {ours:.3f} s | "
          f"{sk / ours:.2f}x (subspace gap {gap:.1e}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
