"""Step 3a of DLDR: P-BFGS, a quasi-Newton method in the subspace of the SGD trajectory.

Builds the basis from samples params_start..params_end-1 of --save-dir, restarts from sample
params_start and trains with P-BFGS (utils.PBFGS), entirely in memory. Writes results_pbfgs.json,
PBFGS.pt and checkpoint_pbfgs.pt (with --basis random: results_pbfgs_random.json, ...).

    python -u train_pbfgs.py --epochs 20 --datasets CIFAR10 --params_start 0 --params_end 81 \
        --batch-size 1024 --n_components 40 --arch resnet20 --save-dir save_resnet20
"""
import torch
import torch.nn.functional as F

import utils
from utils import PBFGS  # noqa: F401  (importable from here, as the authors' script held it)


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 3a: P-BFGS in the trajectory's subspace")
    utils.add_common_arguments(p, arch="resnet32", epochs=100, lr=1.0, batch_size=128,
                               from_record=True)
    utils.add_subspace_arguments(p)
    p.add_argument("--alpha", default=0.0, type=utils.nonnegative_number, metavar="A",
                   help="step size of the momentum on the gradient outside the subspace "
                        "(default: 0)")
    p.add_argument("--gamma", default=0.9, type=utils.momentum_factor, metavar="G",
                   help="momentum factor of that residual (default: 0.9)")
    p.add_argument("--accumulate", default=1, type=utils.positive_int, metavar="N",
                   help="batches whose gradients are averaged per P-BFGS iteration (default: 1)")
    return p


def train_epoch(model, flat, opt, loader, progress, accumulate, amp, begin_step):
    """One epoch of P-BFGS: one optimizer step per ``accumulate`` batches."""
    model.train()
    batches = []
    for i, (x, y) in progress.batches(loader):
        batches.append((x, y, utils.global_batch_share(loader, i, y.shape[0])))
        if len(batches) < accumulate and i < len(loader) - 1:
            continue
        last = {}

        def batch_loss(x, y, share):
            """This process's share of the batch loss (1.0 alone: the mean loss itself, as
            multiplying by 1.0 changes nothing), and its mean loss."""
            begin_step()
            with utils.autocast(x.device, amp):
                output = model(x)
            mean = F.cross_entropy(utils.full_precision(output), y)
            return mean if share == 1.0 else mean * share, mean, output

        def closure():
            if not torch.is_grad_enabled():  # a line-search try: the last batch, as the authors
                return batch_loss(*batches[-1])[0]
            flat.zero_grad()
            for x, y, share in batches:
                loss, last["loss"], output = batch_loss(x, y, share)
                loss.backward()
            if len(batches) > 1:  # the authors' --accumulate: the average of the gradients
                flat.grad.div_(len(batches))
            last["output"] = output.detach().clone()  # CUDA graphs may reuse the output buffer
            return loss

        opt.step(closure)
        # As the authors' loop: the meters see each step's last batch, at the step's batch index
        progress.check_finite(last["loss"], i)
        progress.update(i, last["loss"], last["output"], batches[-1][1])
        batches = []
    return progress.finish()


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.half or args.amp == "fp16":
        raise utils.UsageError(f"{'--half' if args.half else '--amp fp16'}: P-BFGS cannot take "
                               "fp16, whose small gradients underflow without loss scaling through "
                               "the line search; use --amp bf16")
    run = utils.SubspaceRun("pbfgs", "P-BFGS", utils.SubspaceOptions.from_args(args),
                            dict(alpha=args.alpha, gamma=args.gamma, accumulate=args.accumulate),
                            epoch_times=True)
    if run.kept:  # --reuse: this run is there, finished
        return None
    utils.log(f"Random Seed: {run.options.randomseed}")
    utils.log(args.save_dir)
    if args.lr != 1.0:
        utils.log(f"=> note: --lr {args.lr} is ignored; P-BFGS steps are set by the line search "
                  "(the authors' optimizer used lr 1)")
    model = run.prepare()

    # DLDR: the trajectory's samples -> their principal directions -> the restart -> P-BFGS
    run.build_basis()
    flat = run.restart()
    # bf16: the Armijo test's f0 from a no-grad pass, as its tries (fp32 keeps the authors' f0)
    opt = utils.PBFGS(flat.params, run.basis_matrix, buffers=model.buffers(), alpha=args.alpha,
                      gamma=args.gamma, recompute_reference=run.amp == "bf16")
    run.watch_first_step(opt, lambda: opt.state[flat.params[0]]["g_last"], after=True)  # P g
    if args.evaluate:
        return run.evaluate_only()

    with run.training({"pbfgs": opt}):
        begin_step = utils.step_marker(run.device, args.compile)
        utils.log(f"grad accumulate: {args.accumulate}")
        for epoch in run.epochs():
            steps_before, skipped_before = len(opt.search_steps), opt.skipped_pairs
            progress = run.progress(epoch)
            train_epoch(run.step_model, flat, opt, run.train_loader, progress, args.accumulate,
                        run.amp, begin_step)
            if opt.skipped_pairs > skipped_before:
                utils.log(f"=> P-BFGS: {opt.skipped_pairs - skipped_before} non-finite curvature "
                          f"pairs left out of H in epoch {epoch}")
            steps = opt.search_steps[steps_before:]
            run.end_epoch(progress, mean_shrinks=sum(steps) / max(len(steps), 1),
                          skipped_pairs=opt.skipped_pairs)
        run.finish()
    return model


if __name__ == "__main__":
    utils.run_main(main)
