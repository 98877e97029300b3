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


@torch.no_grad()
def project_gradients_(model, basis, flat=None):
    """Replace every trainable parameter's .grad by its projection P^T P g onto the subspace.

    ``basis`` is (k, D) with orthonormal rows, D the number of trainable parameters in
    ``named_parameters()`` order. With a ``utils.FlatParameters`` the projection is done in
    place on its flat gradient buffer. Under torchrun the k subspace coordinates of the gradient
    are summed over the processes: k numbers to exchange instead of D.
    """
    if flat is not None:
        coords = utils.all_reduce_sum_(basis @ flat.grad)
        flat.grad.copy_(basis.T @ coords)
        return
    grad = utils.flat_grad(model)
    coords = utils.all_reduce_sum_(basis @ grad.to(basis.dtype))
    utils.set_flat_grad_(model, basis.T @ coords)


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 3b: P-SGD in the trajectory's subspace")
    utils.add_common_arguments(p, epochs=100, lr=1.0, batch_size=128)
    utils.add_subspace_arguments(p)
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum (default: 0.9)")
    p.add_argument("--milestones", default=[30, 50],
                   type=utils.int_list, metavar="E1,E2",
                   help="epochs where the LR drops 10x (default: 30,50)")
    return p


def train_epoch(model, flat, basis, loader, optimizer, scaler, epoch, args, device, left_after):
    model.train()
    progress = utils.EpochProgress(epoch, len(loader), args.print_freq, left_after)
    for i, (x, y) in enumerate(loader):
        utils.mark_step(args, device)
        with utils.autocast(device, args.amp):
            output = model(x)
            loss = F.cross_entropy(utils.full_precision(output), y)
        progress.check_finite(loss, i)
        flat.zero_grad()  # not optimizer.zero_grad(): the grads are views of the flat buffer
        # The projection sums over processes: weight each by its share (1.0 alone: exact)
        scaler.scale(loss * utils.global_batch_share(y.shape[0], device)).backward()
        # Project (and sum over processes) before unscaling, so every process sees the same
        # gradient when the scaler checks it for infinities.
        project_gradients_(model, basis, flat)
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        progress.update(i, loss, output, y)
    return progress.finish()


def main(argv=None):
    args = build_parser().parse_args(argv)
    results_name, final_name, ckpt_name = utils.subspace_output_names(args, "psgd")
    device = utils.init_distributed(utils.validate_subspace_args(args, ckpt_name))
    if not args.lr > 0:
        raise utils.UsageError(f"--lr {args.lr}: must be positive")
    utils.seed_everything(args.randomseed)
    model, basis, ratios, train_loader, test_loader = utils.prepare_subspace_run(args, device)
    flat = utils.FlatParameters(model)  # before compiling: the compiled graph sees these views
    step_model = utils.compile_model(model, args, device)
    optimizer = torch.optim.SGD(flat.params, lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    results = utils.Results(os.path.join(args.save_dir, results_name), "psgd", args,
                            {"explained_variance_ratio": ratios, "basis": args.basis})
    start_epoch, best_prec1 = 0, 0.0
    w_start = flat.data.clone()  # sample params_start: coordinates are taken from here
    if args.evaluate:
        loss, prec = utils.evaluate(model, test_loader, args.amp)
        utils.log_test(prec, loss)
        return
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    if args.resume:
        start_epoch, best_prec1 = utils.resume_run(args, ckpt_name, model, stateful, train_loader,
                                                   results)
    else:
        loss, prec = utils.evaluate(model, test_loader, args.amp)
        utils.log(f"=> start (sample {args.params_start}):")
        utils.log_test(prec, loss)
        results.add(epoch=0, test_loss=loss, test_acc=prec, time=0.0, coords=[0.0] * len(basis))

    run_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        current_lr = optimizer.param_groups[0]["lr"]
        try:
            progress = train_epoch(step_model, flat, basis, train_loader, optimizer, scaler, epoch,
                                   args, device, args.epochs - epoch - 1)
        except utils.NonFiniteLoss as e:
            raise SystemExit(f"error: {e}; the last good state is in {ckpt_name}")
        scheduler.step()
        train_time = time.time() - epoch_start
        test_loss, prec1 = utils.evaluate(step_model, test_loader, args.amp)
        utils.log_test(prec1, test_loss)
        best_prec1 = max(best_prec1, prec1)
        results.add(epoch=epoch + 1, train_loss=progress.loss, train_acc=progress.accuracy,
                    test_loss=test_loss, test_acc=prec1, lr=current_lr, train_time=train_time,
                    time=time.time() - epoch_start, coords=(basis @ (flat.data - w_start)).tolist())
        ckpt = utils.checkpoint_state(epoch + 1, model, stateful, train_loader, best_prec1, results)
        utils.atomic_torch_save(ckpt, os.path.join(args.save_dir, ckpt_name))
    utils.save_model(model, os.path.join(args.save_dir, final_name))
    utils.log(f"=> P-SGD done: best Prec@1 {best_prec1:.3f}, total time "
              f"{utils.format_eta(time.time() - run_start)}, model in "
              f"{os.path.join(args.save_dir, final_name)}")
    return model


if __name__ == "__main__":
    utils.run_main(main)
