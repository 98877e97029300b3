"""BatchNorm statistics re-estimated on the training data, so that a model is judged by its
weights rather than by running statistics that lag behind large steps (P-BFGS's)."""
import torch

from .progress import evaluate, log, log_test


def has_batchnorm(model):
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_bn(model, loader):
    """Recompute every BatchNorm layer's running statistics over one pass of ``loader`` in train
    mode, changing no weight: torch's ``update_bn`` (each layer's mean and variance averaged over
    the batches), without gradients and with the random generators restored afterwards, so dropout
    draws during the pass leave the run unchanged. Returns False, touching nothing, for a model
    without BatchNorm. Under torchrun ``loader`` splits each global batch over the processes and
    the statistics are the global batch's (SyncBatchNorm)."""
    if not has_batchnorm(model):
        return False
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.optim.swa_utils.update_bn(loader, model)
    return True


def evaluate_reestimated(model, eval_model, test_loader, bn_loader, amp, keep=False):
    """(test loss, accuracy) after re-estimating ``model``'s BatchNorm statistics on ``bn_loader``
    (``eval_model`` runs the forward passes: the model, or its compiled form). The statistics are
    put back afterwards unless ``keep``. None for a model without BatchNorm."""
    saved = [b.clone() for b in model.buffers()]
    if not reestimate_bn(model, bn_loader):
        return None
    result = evaluate(eval_model, test_loader, amp)
    if not keep:
        for b, value in zip(model.buffers(), saved):
            b.copy_(value)
    return result


def evaluate_epoch(model, eval_model, test_loader, bn_loader, amp, print_freq, reestimate):
    """A subspace run's evaluation after an epoch: the authors' (their Test and `` * Prec@1``
    lines) and, with ``reestimate`` (--bn-reestimate), again with BatchNorm statistics re-estimated
    and then put back (an ``=> `` line). Returns (test loss, accuracy, the re-estimated results
    fields: {} without ``reestimate`` or BatchNorm)."""
    loss, acc = evaluate(eval_model, test_loader, amp, print_freq)
    log_test(acc, loss)
    if not reestimate:
        return loss, acc, {}
    bn = evaluate_reestimated(model, eval_model, test_loader, bn_loader, amp)
    if bn is None:
        return loss, acc, {}
    log(f"=> BatchNorm statistics re-estimated: Prec@1 {bn[1]:.3f}\tLoss {bn[0]:.4f}")
    return loss, acc, {"test_loss_bn": bn[0], "test_acc_bn": bn[1]}


def evaluate_twice(model, eval_model, test_loader, bn_loader, amp, label, keep=False):
    """Weights judged twice: as the authors' scripts evaluate them, and after re-estimating the
    BatchNorm statistics on the training data (kept in the model with ``keep``). Logged on one
    ``=> label:`` line; returns {"test_acc", "test_loss", "test_acc_bn", "test_loss_bn",
    "bn_reestimated"}, the results file's "start" and "final" objects."""
    loss, acc = evaluate(eval_model, test_loader, amp)
    bn = evaluate_reestimated(model, eval_model, test_loader, bn_loader, amp, keep=keep)
    loss_bn, acc_bn = bn if bn is not None else (loss, acc)
    log(f"=> {label}: Prec@1 {acc:.3f}\tLoss {loss:.4f}; " + (
        f"BatchNorm statistics re-estimated on the training data: Prec@1 {acc_bn:.3f}\t"
        f"Loss {loss_bn:.4f}" if bn is not None else "no BatchNorm to re-estimate"))
    return {"test_acc": acc, "test_loss": loss, "test_acc_bn": acc_bn, "test_loss_bn": loss_bn,
            "bn_reestimated": bn is not None}
