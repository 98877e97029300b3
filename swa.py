"""SWA (Izmailov et al., "Averaging Weights Leads to Wider Optima", 2018) on the trajectory: the
mean of samples params_start..params_end-1, BatchNorm statistics re-estimated on the training
data (torch.optim.swa_utils.update_bn), evaluated, and saved as a model. The point TWA
(train_twa.py) starts from. Writes results_swa.json and SWA.pt.

    python -u swa.py --datasets CIFAR10 --arch resnet20 --params_start 0 --params_end 81 \
        --save-dir save_resnet20
"""
import os
import time

import utils
from dldr.run import refuse_replacing, remove_outputs, samples_used


def build_parser():
    p = utils.ArgumentParser(description="SWA: the mean of the trajectory's samples, with "
                                         "BatchNorm statistics re-estimated")
    utils.add_data_arguments(p, arch="resnet32", batch_size=128, from_record=True)
    utils.add_sample_arguments(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = utils.SubspaceOptions.from_args(args)
    samples = utils.check_samples_run(options)
    outputs = utils.output_names("swa", "span", args.output_tag, default_basis="span")
    outputs = outputs._replace(what=f"{outputs.results} and {outputs.model}")
    lock = utils.OutputLock(args.save_dir, outputs.lock, outputs.describe())
    lock.check()
    if not args.overwrite:  # (SWA has no checkpoint: it is finished or not there)
        refuse_replacing(args.save_dir, outputs, resumable=False)
    device = utils.resolve_device(args.device)
    amp = utils.amp_mode(args.amp, False, args.dtype)
    device = utils.init_distributed(device)
    utils.log("SWA")
    utils.log(args.save_dir)
    train_set, test_set, model = utils.load_data_and_model(options, device)

    # SWA: the samples' mean, then its BatchNorm statistics re-estimated on the training data
    start = time.time()
    utils.log(f"params: from {args.params_start} to {args.params_end}")
    utils.log(f"W: {(len(samples), sum(p.numel() for p in utils.trainable_parameters(model)))}")
    samples.load_mean_into(model)
    model = utils.sync_batchnorm(model, device)
    evaluator = utils.make_evaluator(options, model, model, train_set, test_set, device, amp)
    lock.acquire()
    if args.overwrite and utils.is_main_process():
        remove_outputs(args.save_dir, outputs)
    final = evaluator.twice(f"SWA, the mean of samples {samples.describe()}", keep=True,
                            train=True)
    utils.log_test(final["test_acc_bn"], final["test_loss_bn"])
    results = utils.Results(os.path.join(args.save_dir, outputs.results), "swa", options.arguments,
                            {"samples": samples.epochs, "start": None, "final": final,
                             "sample_fingerprint": samples_used(samples)})
    results.add(epoch=0, test_loss=final["test_loss"], test_acc=final["test_acc"],
                time=time.time() - start)
    path = os.path.join(args.save_dir, outputs.model)
    utils.save_model(model, path)  # with the re-estimated statistics
    utils.log(f"=> SWA done: Prec@1 {final['test_acc_bn']:.3f} with BatchNorm re-estimated "
              f"({final['test_acc']:.3f} with the samples' mean statistics), model in {path}")
    return model


if __name__ == "__main__":
    utils.run_main(main)
