"""Step 1 of DLDR: train normally and sample the trajectory.

Saves the model's state dict before training (0.pt) and after every epoch E (E.pt) in --save-dir,
plus run.json (provenance), results_sgd.json (per-epoch metrics) and checkpoint.pt (exact resume).

    python -u train_sgd.py --datasets CIFAR10 --arch resnet20 --epochs 150 --save-dir save_resnet20
"""
import os
import re
import time

import torch
import torch.nn.functional as F

import utils
from dldr.run import check_start_flags, refuse_replacing


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 1: SGD training that samples the trajectory")
    utils.add_common_arguments(p, arch="resnet20", epochs=200, lr=0.1, batch_size=128)
    p.add_argument("--momentum", default=0.9, type=utils.momentum_factor, metavar="M",
                   help="momentum (default: 0.9)")
    p.add_argument("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", default=1e-4,
                   type=utils.nonnegative_number, metavar="W", help="weight decay (default: 1e-4)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                   help="sgd (default, learning rate --lr) or adam (learning rate --adam-lr)")
    p.add_argument("--adam-lr", "--adam_lr", dest="adam_lr", default=0.001,
                   type=utils.positive_number,
                   metavar="LR", help="Adam's learning rate (default: 0.001, the authors' fixed "
                                      "value; --lr is SGD's)")
    p.add_argument("--milestones", default=None, type=utils.milestones,
                   metavar="E1,E2", help="epochs where the LR drops 10x (default: 100,150 for "
                   "CIFAR10 and others, 150 for CIFAR100)")
    p.add_argument("--sample-every-steps", "--sample_every_steps", dest="sample_every_steps",
                   default=0, type=utils.nonnegative_int, metavar="N",
                   help="save a sample every N optimizer steps, counted across epochs (0.pt before "
                        "training, then 1.pt, 2.pt, ...), as the paper's ImageNet runs (every "
                        "1000); 0: after every epoch (default)")
    p.add_argument("--sample-rule", "--sample_rule", dest="sample_rule", default="steps",
                   choices=utils.SAMPLE_RULES,
                   help="with --sample-every-steps N: steps (after global steps N, 2N, ...; "
                        "default) or authors-imagenet (the authors' main.py: after batch i of "
                        "each epoch where i %% N == 0, so batch 0 of every epoch and an uneven "
                        "spacing across epoch ends)")
    p.add_argument("--checkpoint-every-steps", "--checkpoint_every_steps",
                   dest="checkpoint_every_steps", default=None, type=utils.positive_int,
                   metavar="N", help="also write checkpoint.pt every N steps inside the epochs, "
                   "to resume there (default: at every sample taken by step, else at epoch ends "
                   "only; SIGINT and SIGTERM write one at the step they stop)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the samples of another run in --save-dir")
    return p


# What the runs on a trajectory leave beside it: other methods' results, final models and
# checkpoints (not SGD's checkpoint.pt and checkpoint_E.pt), and the plots of them all
RUNS_ON_SAMPLES = re.compile(r"results_(?!sgd\.json$).+\.json|(PBFGS|PSGD|TWA|SWA)(_.+)?\.pt"
                             r"|checkpoint_(?!\d+\.pt$).+\.pt"
                             r"|(curves|trajectory|explained_variance)\.png")


def check_runs_idle(save_dir):
    """--overwrite: no other run may be writing its files beside the samples being replaced."""
    if not os.path.isdir(save_dir):
        return
    for name in sorted(os.listdir(save_dir)):
        if name.startswith(".") and name.endswith(".lock") and name != ".sgd.lock":
            stem = name[1:-len(".lock")]
            utils.OutputLock(save_dir, stem, f"the files of its {stem} run").check()


def clear_run(save_dir):
    """--overwrite: remove the previous SGD run's samples, checkpoints and records, and move what
    other runs made from those samples (RUNS_ON_SAMPLES) into stale_<time>/, so that no reader
    takes them for runs on the new trajectory."""
    stale = sorted(n for n in os.listdir(save_dir) if RUNS_ON_SAMPLES.fullmatch(n)
                   and os.path.isfile(os.path.join(save_dir, n)))
    if stale:
        folder = os.path.join(save_dir, time.strftime("stale_%Y%m%d-%H%M%S"))
        base, n = folder, 1
        while os.path.exists(folder):
            n += 1
            folder = f"{base}-{n}"
        try:
            os.makedirs(folder)
            for name in stale:
                os.rename(os.path.join(save_dir, name), os.path.join(folder, name))
        except OSError as e:
            raise utils.WriteError(f"{folder}: cannot move the replaced runs' files there "
                                   f"({e.strerror})") from None
        utils.log(f"=> --overwrite: {len(stale)} files of the runs on the replaced samples "
                  f"({', '.join(stale)}) moved to {folder}")
    for name in os.listdir(save_dir):
        stem = name[:-3] if name.endswith(".pt") else ""
        if stem.isdigit() or stem == "checkpoint" or (stem.startswith("checkpoint_") and stem[
                len("checkpoint_"):].isdigit()) or name in ("run.json", "results_sgd.json",
                                                             "noisy_labels.json"):
            os.unlink(os.path.join(save_dir, name))


def train_epoch(model, loader, optimizer, scaler, progress, amp, begin_step, channels_last,
                after_step):
    """One epoch of SGD (under torchrun: DDP) on the full parameter vector; ``after_step(i)``
    writes the samples and checkpoints due after the step on batch i (Run.after_step)."""
    model.train()
    processes = utils.world()[1]
    for i, (x, y) in progress.batches(loader):
        begin_step()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with utils.autocast(x.device, amp):
            output = model(x)
            loss = F.cross_entropy(utils.full_precision(output), y)
        progress.check_finite(loss, i)
        optimizer.zero_grad(set_to_none=True)
        # DDP averages over processes: weight each by its share of the batch (1.0 alone: no
        # multiply, which would change nothing but cost two operations a step)
        share = utils.global_batch_share(loader, i, y.shape[0]) * processes
        scaler.scale(loss if share == 1.0 else loss * share).backward()
        scaler.step(optimizer)
        scaler.update()
        progress.update(i, loss, output, y)
        after_step(i)
    return progress.finish()


def main(argv=None):
    args = build_parser().parse_args(argv)
    utils.check_arch_name(args.arch, args.datasets)
    utils.check_dataset_name(args.datasets, args.data_root)
    utils.make_deterministic(args.deterministic)
    device = utils.resolve_device(args.device)
    amp = utils.amp_mode(args.amp, args.half, args.dtype)
    if args.start_epoch > args.epochs:
        raise utils.UsageError(f"--start-epoch {args.start_epoch}: beyond --epochs {args.epochs}; "
                               f"use --epochs >= {args.start_epoch}")
    if 0 < args.start_epoch == args.epochs and not (args.resume or args.evaluate):
        # it would write sample N.pt from the initial weights, which are not epoch N's
        raise utils.UsageError(f"--start-epoch {args.start_epoch}: the run would train nothing "
                               f"with --epochs {args.epochs} and write {args.start_epoch}.pt from "
                               f"the initial weights; use --epochs > {args.start_epoch}")
    if args.sample_rule != "steps" and not args.sample_every_steps:
        raise utils.UsageError(f"--sample-rule {args.sample_rule}: it says which steps "
                               "--sample-every-steps N samples; pass --sample-every-steps N too")
    if args.sample_every_steps and args.start_epoch:
        raise utils.UsageError(f"--start-epoch {args.start_epoch}: not with --sample-every-steps, "
                               "whose samples are numbered by step from the start of training")
    check_start_flags(args.resume, args.overwrite, args.reuse, args.resume_weights,
                      args.evaluate)  # (Run has no --overwrite of SGD's to check it with)
    if args.resume and args.resume != "auto" and not os.path.isfile(args.resume):
        raise utils.UsageError(f"--resume: no checkpoint at {args.resume}")
    if args.resume == "auto" and not os.path.isfile(os.path.join(args.save_dir, "checkpoint.pt")):
        raise utils.UsageError(f"--resume: no checkpoint.pt in {args.save_dir} to resume from")
    milestones = args.milestones or ([150] if args.datasets == "CIFAR100" else [100, 150])
    # What defines the run: its checkpoints record it, and --resume must match it
    identity = {k: getattr(args, k) for k in ("arch", "datasets", "corrupt", "smalldatasets",
                                              "randomseed", "batch_size", "optimizer", "lr",
                                              "adam_lr", "momentum", "weight_decay", "dtype",
                                              "loader")}
    identity.update(method="sgd", milestones=milestones, amp=amp)
    if args.sample_every_steps:  # (per-epoch runs keep the identity they always had)
        identity.update(sample_every_steps=args.sample_every_steps, sample_rule=args.sample_rule)
    run = utils.Run(args.save_dir, utils.SGD_OUTPUTS, identity, resume=args.resume,
                    epochs=args.epochs, evaluating=args.evaluate, sample_dir=args.save_dir,
                    keep_every=args.save_every, resume_weights=args.resume_weights,
                    reuse=args.reuse)
    # (it refuses when another run writes there)
    if run.kept:  # --reuse: this run is there, finished
        return None
    existing = utils.available_samples(args.save_dir)
    if existing and not (run.continuing or args.overwrite or args.evaluate):
        raise utils.UsageError(
            f"--save-dir {args.save_dir} already holds samples ({utils.describe_epochs(existing)}) "
            "of another run; pass --resume to continue it or --overwrite to replace it")
    if not (run.continuing or args.overwrite or args.evaluate):  # its samples deleted, say
        refuse_replacing(args.save_dir, utils.SGD_OUTPUTS, tagged=False)
    if args.overwrite:
        check_runs_idle(args.save_dir)  # their files are moved aside below
    if args.pretrained and args.datasets in utils.FOLDER_DATASETS:  # fetched before any write
        utils.pretrained_state(args.arch, len(utils.folder_classes(args.datasets, args.data_root)))
    utils.check_writable_dir(args.save_dir)  # created when the run starts writing
    device = utils.init_distributed(device)
    utils.log(args.save_dir)
    utils.seed_everything(args.randomseed)
    train_set, test_set = utils.load_data(args.datasets, args.data_root, args.smalldatasets,
                                          args.corrupt, args.randomseed)
    if run.continuing:
        utils.check_noise_record(args.save_dir, train_set.noise)
    num_classes = train_set.num_classes
    model = utils.build_model(args.arch, args.datasets, num_classes, device, args.dtype,
                              args.pretrained)
    utils.seed_processes(args.randomseed)  # under torchrun: each process its own dropout
    if args.pretrained and args.datasets not in utils.FOLDER_DATASETS:
        utils.log(f"=> --pretrained: no pretrained weights for the CIFAR architecture {args.arch}; "
                  "ignored, as in the authors' scripts")
    model = utils.sync_batchnorm(model, device)
    channels_last = device.type == "cuda"  # NHWC convolutions are faster on tensor cores
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Under torchrun the steps run through DDP; evaluation (each process its shard) does not.
    step_model = utils.compile_model(utils.distributed_model(model, device,
                                                             utils.batch_shape(train_set)),
                                     device, args.compile,
                                     args.compile_mode, args.compile_backend)
    eval_model = step_model if utils.world()[1] == 1 else model
    n_params = sum(p.numel() for p in utils.trainable_parameters(model))
    utils.log(f"=> {args.arch}: {n_params} trainable parameters, {args.datasets} "
              f"({len(train_set)} train / {len(test_set)} test, {num_classes} classes), "
              f"corrupt {args.corrupt}, device {device}"
              + (f", {utils.world()[1]} processes" if utils.world()[1] > 1 else ""))
    if args.optimizer == "sgd":
        lr = args.lr
        optimizer = torch.optim.SGD(model.parameters(), lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    else:
        lr = args.adam_lr
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    train_loader = utils.make_loader(train_set, args.batch_size, device, shuffle=True,
                                     kind=args.loader, workers=args.workers, seed=args.randomseed)
    test_loader = utils.make_loader(test_set, utils.test_batch_size(args.datasets, args.batch_size),
                                    device, shuffle=False, kind=args.loader, workers=args.workers)
    evaluator = utils.Evaluator(model, eval_model, test_loader,
                                utils.bn_loader(train_set, args.batch_size, device, args.loader,
                                                args.workers), amp, args.print_freq)
    results = utils.Results(os.path.join(args.save_dir, "results_sgd.json"), "sgd",
                            dict(vars(args)), {"num_params": n_params, "num_classes": num_classes,
                                               "milestones": milestones})
    if args.evaluate:
        if args.resume:
            utils.load_weights(utils.find_resume_checkpoint(args.resume, args.save_dir,
                                                            "checkpoint.pt"), model)
        evaluator.test()
        return model

    sampling = utils.SamplingPlan(args.sample_every_steps, args.sample_rule,
                                  args.checkpoint_every_steps, len(train_loader))
    with run.writing(model=model, stateful={"optimizer": optimizer, "scheduler": scheduler,
                                                    "scaler": scaler},
                     train_loader=train_loader, results=results, evaluator=evaluator,
                     start_epoch=args.start_epoch, sampling=sampling):
        if not run.resumed:
            if args.overwrite and utils.is_main_process():
                clear_run(args.save_dir)
            if train_set.noise is not None:
                utils.save_noise_record(args.save_dir, train_set.noise)
            utils.fast_forward(scheduler, run.epoch)  # --start-epoch N: the schedule of epoch N
            utils.atomic_write_json(os.path.join(args.save_dir, "run.json"),
                                    utils.provenance(dict(vars(args)), num_classes))
            loss, prec = evaluator.test(lines=False)
            utils.log(f"=> sample {run.epoch}, before training: Prec@1 {prec:.3f}\t"
                      f"Loss {loss:.4f}")
            run.save_start(test_loss=loss, test_acc=prec, time=0.0, lr=lr)  # and sample 0.pt
        warmup = args.arch in ("resnet110", "resnet1202") and args.optimizer == "sgd"
        begin_step = utils.step_marker(device, args.compile)
        utils.log(f"Start training:  {run.epoch} -> {args.epochs}")
        if sampling.by_step:
            utils.log(f"=> {sampling.describe()}: samples 0..{sampling.samples_in(args.epochs) - 1}"
                      f" in {args.epochs} epochs of {sampling.batches} steps")
        for epoch in run.epochs(args.epochs):
            if warmup and epoch == 0:
                # He et al.: lr/10 until training gets going (the first epoch here), then back.
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.1
            current_lr = optimizer.param_groups[0]["lr"]
            utils.log(f"current lr {current_lr:.5e}")
            progress = run.progress(epoch, args.epochs, args.print_freq, print_last=False)
            with run.stepping():  # a signal stops at a step's end, after a checkpoint there
                train_epoch(step_model, train_loader, optimizer, scaler, progress, amp, begin_step,
                            channels_last, run.after_step)
            utils.log(f"Total time for epoch [{epoch}] : {progress.batch_time:.3f}")
            if warmup and epoch == 0:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            scheduler.step()
            run.end_epoch(progress, before={"lr": current_lr})  # checkpoint, sample E.pt, results
        run.finish()
        utils.log_sgd_lists(results.data["epochs"])
        first, last = ((0, results.data["samples"][-1]["sample"]) if sampling.by_step
                       else (run.first_epoch, args.epochs))
        run.done("SGD", f"samples {first}..{last} in {args.save_dir}")
    return model


if __name__ == "__main__":
    utils.run_main(main)
