"""Step 3b of DLDR: P-SGD, SGD with momentum whose gradients are projected onto the subspace.

Builds the basis from samples params_start..params_end-1 of --save-dir, restarts from sample
params_start and trains with gradient P^T P g (lr 1, momentum 0.9, LR x0.1 at epochs 30 and 50).
Writes results_psgd.json, PSGD.pt and checkpoint_psgd.pt (with --basis random: *_random; with
--basis span: *_span, where --weight-decay applies). train_twa.py is this script with TWA's
defaults.

    python -u train_psgd.py --epochs 40 --datasets CIFAR10 --lr 1 --params_start 0 --params_end 81 \
        --batch-size 128 --n_components 40 --arch resnet20 --save-dir save_resnet20
"""
import torch
import torch.nn.functional as F

import utils


def build_parser(description="DLDR step 3b: P-SGD in the trajectory's subspace", epochs=100,
                 lr=1.0, milestones=(30, 50), **subspace_defaults):
    p = utils.ArgumentParser(description=description)
    utils.add_common_arguments(p, arch="resnet32", epochs=epochs, lr=lr, batch_size=128,
                               from_record=True)
    utils.add_subspace_arguments(p, **subspace_defaults)
    p.add_argument("--momentum", default=0.9, type=utils.momentum_factor, metavar="M",
                   help="momentum (default: 0.9)")
    p.add_argument("--alpha", default=0.0, type=utils.nonnegative_number, metavar="A",
                   help="accepted for the authors' command lines; P-SGD does not use it, as theirs")
    p.add_argument("--gamma", default=0.9, type=utils.momentum_factor, metavar="G",
                   help="accepted for the authors' command lines; P-SGD does not use it, as theirs")
    p.add_argument("--milestones", default=milestones and list(milestones), type=utils.milestones,
                   metavar="E1,E2", help="epochs where the LR drops 10x (default: " + (
                       ",".join(map(str, milestones)) if milestones else
                       "TWA's, at 50%% and 75%% of --epochs") + ")")
    return p


def twa_milestones(epochs):
    """TWA's schedule (nblt/TWA train_twa.py): the LR drops 10x at 50% and 75% of the epochs."""
    return [int(epochs * 0.5), int(epochs * 0.75 + 0.9)]


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
        # The projection sums over processes: weight each by its share (1.0 alone: no multiply,
        # which would change nothing but cost two operations a step)
        share = utils.global_batch_share(loader, i, y.shape[0])
        scaler.scale(loss if share == 1.0 else loss * share).backward()
        # Project (and sum over processes) before unscaling, so every process sees the same
        # gradient when the scaler checks it for infinities.
        utils.project_gradients_(flat.params, basis)
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        progress.update(i, loss, output, y)
    return progress.finish()


def main(argv=None, parser=None, method="psgd", title="P-SGD"):
    own = parser or build_parser()
    args = own.parse_args(argv)
    milestones = args.milestones or twa_milestones(args.epochs)
    weight_decay = args.weight_decay if args.basis == "span" else 0.0  # see --weight-decay
    run = utils.SubspaceRun(method, title, utils.SubspaceOptions.from_args(args),
                            dict(lr=args.lr, momentum=args.momentum, milestones=milestones,
                                 weight_decay=weight_decay),
                            default_basis=parser.get_default("basis") if parser else "dldr")
    if run.kept:  # --reuse: this run is there, finished
        return None
    utils.log(title)
    utils.log(args.save_dir)
    # Flags given but not used are said (the results record what was used)
    if args.basis == "span" and args.n_components != own.get_default("n_components"):
        utils.log(f"=> note: --n_components {args.n_components} is ignored: the span basis has one "
                  f"direction per sample, {len(run.trajectory)} here")
    if weight_decay != args.weight_decay and (parser is not None or
                                              args.weight_decay != own.get_default("weight_decay")):
        utils.log(f"=> note: --weight-decay {args.weight_decay:g} is not applied with --basis "
                  f"{args.basis}: decay towards 0 would leave the subspace (see --help); the run "
                  "uses 0")
    model = run.prepare()

    # DLDR: the trajectory's samples -> their principal directions -> the restart -> SGD in P
    run.build_basis()
    flat = run.restart()
    optimizer = torch.optim.SGD(flat.params, lr=args.lr, momentum=args.momentum,
                                weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp == "fp16")
    run.watch_first_step(optimizer, lambda: flat.grad)  # diagnostics: P^T P g, unscaled
    if args.evaluate:
        return run.evaluate_only()

    with run.training({"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler},
                      scheduler):
        begin_step = utils.step_marker(run.device, args.compile)
        for epoch in run.epochs():
            lr = optimizer.param_groups[0]["lr"]
            progress = run.progress(epoch)
            train_epoch(run.step_model, flat, run.basis_matrix, run.train_loader, optimizer,
                        scaler, progress, run.amp, begin_step)
            scheduler.step()
            run.end_epoch(progress, before={"lr": lr})
        run.finish()
    return model


if __name__ == "__main__":
    utils.run_main(main)
