"""Step 3a of DLDR: P-BFGS, a quasi-Newton method in the subspace of the SGD trajectory.

Builds the basis from samples params_start..params_end-1 of --save-dir, restarts from sample
params_start and trains with P-BFGS (utils.PBFGS), entirely in memory. Writes results_pbfgs.json,
PBFGS.pt and checkpoint_pbfgs.pt (with --basis random: results_pbfgs_random.json, ...).

    python -u train_pbfgs.py --epochs 20 --datasets CIFAR10 --params_start 0 --params_end 81 \
        --batch-size 1024 --n_components 40 --arch resnet20 --save-dir save_resnet20
"""
import os
import time

import torch
import torch.nn.functional as F

import utils
from utils import PBFGS  # noqa: F401  (importable from here, as the authors' script held it)


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 3a: P-BFGS in the trajectory's subspace")
    utils.add_common_arguments(p, arch="resnet32", epochs=100, lr=1.0, batch_size=128)
    utils.add_subspace_arguments(p)
    p.add_argument("--alpha", default=0.0, type=float, metavar="A",
                   help="step size of the momentum on the gradient outside the subspace "
                        "(default: 0)")
    p.add_argument("--gamma", default=0.9, type=float, metavar="G",
                   help="momentum factor of that residual (default: 0.9)")
    p.add_argument("--accumulate", default=1, type=utils.positive_int, metavar="N",
                   help="batches whose gradients are averaged per P-BFGS iteration (default: 1)")
    return p


def train_epoch(model, flat, opt, loader, progress, accumulate, amp, begin_step):
    """One epoch of P-BFGS: one optimizer step per ``accumulate`` batches."""
    model.train()
    batches = []
    for i, batch in progress.batches(loader):
        batches.append(batch)
        if len(batches) < accumulate and i < len(loader) - 1:
            continue
        last = {}

        def batch_loss(x, y, share):
            """This process's share of the batch loss (1.0 alone: exact), and its mean loss."""
            begin_step()
            with utils.autocast(x.device, amp):
                output = model(x)
            mean = F.cross_entropy(utils.full_precision(output), y)
            return mean * share, mean, output

        def closure():
            if not torch.is_grad_enabled():  # a line-search try: the last batch, as the authors
                return batch_loss(*batches[-1], last["share"])[0]
            flat.zero_grad()
            for x, y in batches:
                last["share"] = utils.global_batch_share(y.shape[0], x.device)
                loss, last["loss"], output = batch_loss(x, y, last["share"])
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
    results_name, final_name, ckpt_name, lock_name = utils.output_names("pbfgs", args.basis,
                                                                        args.output_tag)
    utils.check_subspace_run(
        args.save_dir, arch=args.arch, datasets=args.datasets, data_root=args.data_root,
        corrupt=args.corrupt, smalldatasets=args.smalldatasets, randomseed=args.randomseed,
        params_start=args.params_start, params_end=args.params_end, params_step=args.params_step,
        n_components=args.n_components, basis=args.basis, resume=args.resume,
        checkpoint_name=ckpt_name)
    lock = utils.OutputLock(args.save_dir, lock_name,
                            f"{results_name}, {final_name} and {ckpt_name}")
    if not args.evaluate:
        lock.check()
    device = utils.resolve_device(args.device)
    amp = utils.amp_mode(args.amp, args.half, args.dtype)
    if amp == "fp16":
        raise utils.UsageError(f"{'--half' if args.half else '--amp fp16'}: P-BFGS cannot take "
                               "fp16, whose small gradients underflow without loss scaling through "
                               "the line search; use --amp bf16")
    device = utils.init_distributed(device)
    utils.log(f"Random Seed: {args.randomseed}")
    utils.log(args.save_dir)
    if args.lr != 1.0:
        utils.log(f"=> note: --lr {args.lr} is ignored; P-BFGS steps are set by the line search "
                  "(the authors' optimizer used lr 1)")
    utils.note_unchecked_noise(args.save_dir, args.corrupt)
    utils.seed_everything(args.randomseed)
    train_set, test_set = utils.load_data(args.datasets, args.data_root, args.smalldatasets,
                                          args.corrupt, args.randomseed)
    utils.check_noise_record(args.save_dir, train_set.noise)
    model = utils.build_model(args.arch, args.datasets, train_set.num_classes, device, args.dtype)

    # DLDR: the trajectory's samples, their principal directions, the restart from a sample
    start = time.time()
    if args.basis == "dldr":
        epochs = utils.sample_epochs(args.params_start, args.params_end, args.params_step)
        samples = utils.load_samples(args.save_dir, epochs, model, args.arch, args.streaming_basis)
        basis, ratios = utils.trajectory_basis(samples, args.n_components, device)
        utils.log_basis(basis.shape, ratios, epochs, args.params_start, args.params_end,
                        args.params_step, time.time() - start,
                        streamed=not torch.is_tensor(samples))
        del samples
    else:
        dim = sum(p.numel() for p in utils.trainable_parameters(model))
        basis, ratios = utils.random_basis(dim, args.n_components, args.randomseed), None
        utils.log(f"P: {tuple(basis.shape)}")
        utils.log(f"=> random basis: {args.n_components} orthonormal directions "
                  f"(seed {args.randomseed})")
    utils.load_sample_into(model, utils.sample_path(args.save_dir, args.params_start), args.arch)
    model = utils.sync_batchnorm(model, device)  # under torchrun: statistics of the global batch
    flat = utils.FlatParameters(model)  # before compiling: the compiled graph sees these views
    basis = basis.to(device=device, dtype=flat.data.dtype).contiguous()
    step_model = utils.compile_model(model, device, args.compile, args.compile_mode,
                                     args.compile_backend)
    opt = PBFGS(flat.params, basis, buffers=model.buffers(), alpha=args.alpha, gamma=args.gamma)

    train_loader = utils.make_loader(train_set, args.batch_size, device, shuffle=True,
                                     kind=args.loader, workers=args.workers, seed=args.randomseed)
    test_loader = utils.make_loader(test_set, utils.test_batch_size(args.datasets, args.batch_size),
                                    device, shuffle=False, kind=args.loader, workers=args.workers)
    bn_loader = utils.bn_loader(train_set, args.batch_size, device, args.loader, args.workers)
    results = utils.Results(os.path.join(args.save_dir, results_name), "pbfgs", dict(vars(args)),
                            {"explained_variance_ratio": ratios, "basis": args.basis})
    start_epoch, best_prec1 = args.start_epoch, 0.0
    w_start = flat.data.clone()  # the restart sample: coordinates are taken from here
    if args.evaluate:
        utils.evaluate_only(args.resume, args.save_dir, ckpt_name, model, step_model, test_loader,
                            amp, args.print_freq)
        return model
    stateful = {"pbfgs": opt}
    # From here on the run writes, alone (rank 0 under torchrun): a stop (signal, failed write)
    # says what is saved and how to resume; every epoch ends with its checkpoint, then its results.
    if args.resume:
        path = utils.find_resume_checkpoint(args.resume, args.save_dir, ckpt_name)
        start_epoch, best_prec1 = utils.resume_run(path, model, stateful, train_loader, results)
    lock.acquire()
    checkpoint = os.path.join(args.save_dir, ckpt_name)
    state = utils.RunState(checkpoint)
    with state.guard():
        if args.resume:
            state.saved = start_epoch
            results.save()
        else:
            start = results.data["start"] = utils.evaluate_twice(
                model, step_model, test_loader, bn_loader, amp,
                f"sample {args.params_start}, the restart")
            results.add(epoch=start_epoch, test_loss=start["test_loss"], test_acc=start["test_acc"],
                        time=0.0, coords=[0.0] * len(basis), save=False)
            state.save(utils.checkpoint_state(start_epoch, model, stateful, train_loader,
                                              best_prec1, results))
            results.save()

        begin_step = utils.step_marker(device, args.compile)
        utils.log(f"grad accumulate: {args.accumulate}")
        utils.log(f"Train: {(start_epoch, args.epochs)}")
        run_start = time.time()
        for epoch in range(start_epoch, args.epochs):
            state.epoch = epoch
            epoch_start = time.time()
            steps_before, skipped_before = len(opt.search_steps), opt.skipped_pairs
            progress = utils.EpochProgress(epoch, len(train_loader), args.print_freq,
                                           args.epochs - epoch - 1)
            try:
                train_epoch(step_model, flat, opt, train_loader, progress, args.accumulate, amp,
                            begin_step)
            except utils.NonFiniteLoss as e:
                raise SystemExit(f"error: {e}; the last good state is in {ckpt_name}")
            train_time = time.time() - epoch_start
            if opt.skipped_pairs > skipped_before:
                utils.log(f"=> P-BFGS: {opt.skipped_pairs - skipped_before} non-finite curvature "
                          f"pairs left out of H in epoch {epoch}")
            test_loss, prec1, bn_fields = utils.evaluate_epoch(
                model, step_model, test_loader, bn_loader, amp, args.print_freq, args.bn_reestimate)
            steps = opt.search_steps[steps_before:]
            best_prec1 = max(best_prec1, prec1)
            results.add(epoch=epoch + 1, train_loss=progress.loss, train_acc=progress.accuracy,
                        test_loss=test_loss, test_acc=prec1, train_time=train_time,
                        time=time.time() - epoch_start,
                        mean_shrinks=sum(steps) / max(len(steps), 1),
                        skipped_pairs=opt.skipped_pairs,
                        coords=(basis @ (flat.data - w_start)).tolist(),
                        **bn_fields, save=False)
            ckpt = utils.checkpoint_state(epoch + 1, model, stateful, train_loader, best_prec1,
                                          results)
            state.save(ckpt)  # first: the results can be rebuilt from it
            results.save()
        state.trained = True
        # The final weights judged twice: as the authors' scripts do, and with BatchNorm statistics
        # re-estimated (which the saved model keeps with --bn-reestimate)
        results.data["final"] = utils.evaluate_twice(model, step_model, test_loader, bn_loader, amp,
                                                     "final", keep=args.bn_reestimate)
        results.save()
        utils.save_model(model, os.path.join(args.save_dir, final_name))
        utils.log_subspace_lists(results.data["epochs"], time.time() - run_start, best_prec1,
                                 epoch_times=True)
        utils.log(f"=> P-BFGS done: best Prec@1 {best_prec1:.3f}, total time "
                  f"{utils.format_eta(time.time() - run_start)}, model in "
                  f"{os.path.join(args.save_dir, final_name)}")
        return model


if __name__ == "__main__":
    utils.run_main(main)
