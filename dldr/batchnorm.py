"""BatchNorm statistics re-estimated on the training data, so that a model is judged by its
weights rather than by running statistics that lag behind large steps (P-BFGS's)."""
import torch

from .progress import evaluate


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


def evaluate_reestimated(model, eval_model, test_loader, bn_loader, amp, keep=False, train=False):
    """(test loss, accuracy) after re-estimating ``model``'s BatchNorm statistics on ``bn_loader``
    (``eval_model`` runs the forward passes: the model, or its compiled form), and with ``train``
    then (training loss, accuracy) over ``bn_loader`` too: the training set as the test set is
    seen. The statistics are put back afterwards unless ``keep``. None for a model without
    BatchNorm."""
    saved = [b.clone() for b in model.buffers()]
    if not reestimate_bn(model, bn_loader):
        return None
    result = evaluate(eval_model, test_loader, amp)
    if train:
        result += evaluate(eval_model, bn_loader, amp)
    if not keep:
        for b, value in zip(model.buffers(), saved):
            b.copy_(value)
    return result
