"""Step 3b of DLDR: P-SGD, SGD with momentum whose gradients are projected onto the subspace.

Builds the basis from samples params_start..params_end-1 of --save-dir, restarts from sample
params_start and trains with gradient P^T P g (lr 1, momentum 0.9, LR x0.1 at epochs 30 and 50).
Writes results_psgd.json, PSGD.pt and checkpoint_psgd.pt (with --basis random: *_random).

    python -u train_psgd.py --epochs 40 --datasets CIFAR10 --lr 1 --params_start 0 --params_end 81 \
        --batch-size 128 --n_components 40 --arch resnet20 --save-dir save_resnet20
"""
import os
import time

import torch
import torch.nn.functional as F

import utils


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 3b: P-SGD in the trajectory's subspace")
    utils.add_common_arguments(p, arch="resnet32", epochs=100, lr=1.0, batch_size=128)
    utils.add_subspace_arguments(p)
    p.add_argument("--momentum", default=0.9, type=float, metavar="M",
                   help="momentum (default: 0.9)")
    p.add_argument("--alpha", default=0.0, type=float, metavar="A",
                   help="accepted for the authors' command lines; P-SGD does not use it, as theirs")
    p.add_argument("--gamma", default=0.9, type=float, metavar="G",
                   help="accepted for the authors' command lines; P-SGD does not use it, as theirs")
    p.add_argument("--milestones", default=[30, 50], type=utils.int_list, metavar="E1,E2",
                   help="epochs where the LR drops 10x (default: 30,50)")
    return p


def train_epoch(model, flat, basis, loader, optimizer, scaler, progress, amp, begin_step):
    """One epoch of P-SGD: every gradient is replaced by its projection P^T P g before the step."""
    model.train()
    for i, (x, y) in progress.batches(loader):
        begin_step()
        with utils.autocast(x.device, amp):
            output = model(x)
            loss = F.cross_entropy(utils.full_precision(output), y)
        progress.check_finite(loss, i)
        flat.zero_grad()  # not optimizer.zero_grad(): the grads are views of the flat buffer
        # The projection sums over processes: weight each by its share (1.0 alone: exact)
        scaler.scale(loss * utils.global_batch_share(y.shape[0], x.device)).backward()
        # Project (and sum over processes) before unscaling, so every process sees the same
        # gradient when the scaler checks it for infinities.
        utils.project_gradients_(flat.params, basis)
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        progress.update(i, loss, output, y)
    return progress.finish()


def main(argv=None):
    args = build_parser().parse_args(argv)
    results_name, final_name, ckpt_name, lock_name = utils.output_names("psgd", args.basis,
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
    if not args.lr > 0:
        raise utils.UsageError(f"--lr {args.lr}: must be positive")
    device = utils.init_distributed(device)
    utils.log("P-SGD")
    utils.log(args.save_dir)
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
    optimizer = torch.optim.SGD(flat.params, lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    train_loader = utils.make_loader(train_set, args.batch_size, device, shuffle=True,
                                     kind=args.loader, workers=args.workers, seed=args.randomseed)
    test_loader = utils.make_loader(test_set, utils.test_batch_size(args.datasets, args.batch_size),
                                    device, shuffle=False, kind=args.loader, workers=args.workers)
    bn_loader = utils.bn_loader(train_set, args.batch_size, device, args.loader, args.workers)
    results = utils.Results(os.path.join(args.save_dir, results_name), "psgd", dict(vars(args)),
                            {"explained_variance_ratio": ratios, "basis": args.basis})
    start_epoch, best_prec1 = args.start_epoch, 0.0
    w_start = flat.data.clone()  # the restart sample: coordinates are taken from here
    if args.evaluate:
        utils.evaluate_only(args.resume, args.save_dir, ckpt_name, model, step_model, test_loader,
                            amp, args.print_freq)
        return model
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
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
            utils.fast_forward(scheduler, start_epoch)  # --start-epoch N: the schedule of epoch N
            start = results.data["start"] = utils.evaluate_twice(
                model, step_model, test_loader, bn_loader, amp,
                f"sample {args.params_start}, the restart")
            results.add(epoch=start_epoch, test_loss=start["test_loss"], test_acc=start["test_acc"],
                        time=0.0, coords=[0.0] * len(basis), save=False)
            state.save(utils.checkpoint_state(start_epoch, model, stateful, train_loader,
                                              best_prec1, results))
            results.save()

        begin_step = utils.step_marker(device, args.compile)
        utils.log(f"Train: {(start_epoch, args.epochs)}")
        run_start = time.time()
        for epoch in range(start_epoch, args.epochs):
            state.epoch = epoch
            epoch_start = time.time()
            current_lr = optimizer.param_groups[0]["lr"]
            progress = utils.EpochProgress(epoch, len(train_loader), args.print_freq,
                                           args.epochs - epoch - 1)
            try:
                train_epoch(step_model, flat, basis, train_loader, optimizer, scaler, progress, amp,
                            begin_step)
            except utils.NonFiniteLoss as e:
                raise SystemExit(f"error: {e}; the last good state is in {ckpt_name}")
            scheduler.step()
            train_time = time.time() - epoch_start
            test_loss, prec1, bn_fields = utils.evaluate_epoch(
                model, step_model, test_loader, bn_loader, amp, args.print_freq, args.bn_reestimate)
            best_prec1 = max(best_prec1, prec1)
            results.add(epoch=epoch + 1, train_loss=progress.loss, train_acc=progress.accuracy,
                        test_loss=test_loss, test_acc=prec1, lr=current_lr, train_time=train_time,
                        time=time.time() - epoch_start,
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
        utils.log_subspace_lists(results.data["epochs"], time.time() - run_start, best_prec1)
        utils.log(f"=> P-SGD done: best Prec@1 {best_prec1:.3f}, total time "
                  f"{utils.format_eta(time.time() - run_start)}, model in "
                  f"{os.path.join(args.save_dir, final_name)}")
        return model


if __name__ == "__main__":
    utils.run_main(main)
