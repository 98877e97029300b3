"""Several processes under torchrun: the process group, sums over processes, and BatchNorm over
the global batch. In a single process every function here is a no-op or returns its input."""
import inspect
import os
import sys

import torch
import torch.distributed as dist


def world():
    """(rank, number of processes); (0, 1) when not launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process():
    return world()[0] == 0


def init_distributed(device):
    """Join torchrun's process group when launched by it; returns this process's device.

    NCCL with one GPU per process (LOCAL_RANK) on CUDA, Gloo on CPUs. Only rank 0 prints to
    stdout and writes files (see ``files.atomic_write``); errors still reach stderr from every rank.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def seed_processes(seed):
    """Under torchrun, once the model is built (the same weights in every process): every
    process but rank 0 reseeds torch's generators (CPU and CUDA) from ``seed`` and its rank, so
    that its draws (dropout) are its own; rank 0 keeps the stream one process would have."""
    rank, size = world()
    if size > 1 and rank > 0:
        torch.manual_seed((seed + 1_000_003 * rank) % 2 ** 63)


def all_gather_objects(obj):
    """[every process's ``obj``] by rank ([obj] in a single process)."""
    rank, size = world()
    if size == 1:
        return [obj]
    gathered = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum_(tensor):
    """Sum ``tensor`` over the processes in place; nothing to do in a single process."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_max(value, device):
    """The largest of the processes' numbers ``value`` (one collective, on ``device``)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def global_batch_share(loader, i, n_local):
    """This process's share of global batch ``i`` of ``loader`` that holds ``n_local`` of its
    images (1.0 in one process), from sizes known on the host (``loader.global_batch_size``): no
    transfer to the device, no collective.

    A process's mean loss times its share, summed over the processes, is the mean loss of the
    global batch, even when the processes hold unequal parts of it (the last batch of an epoch).
    """
    return 1.0 if world()[1] == 1 else n_local / loader.global_batch_size(i)


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes (every process's
    output depends on every process's input)."""

    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_sum_(tensor.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum_(grad.clone())


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    Ours because torch.nn.SyncBatchNorm runs on GPUs only; this one runs anywhere (the CPU/Gloo
    runs use it). Mean first, then the centred second moment: two small all-reduces per layer,
    but no E[x^2] - E[x]^2 cancellation. Gradients flow through the all-reduces. Same parameter
    and buffer names as nn.BatchNorm*d, so samples stay interchangeable.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected an input with at least 2 dimensions, got {x.dim()}")

    def forward(self, x):
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        all_reduce = _DifferentiableAllReduce.apply
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model, device):
    """Under torchrun, every BatchNorm normalises over the global batch, so that several
    processes compute what one process would with the same global batch."""
    if world()[1] == 1:
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, SyncBatchNorm):
                new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
                # The same parameter and buffer tensors: nothing is copied or reordered.
                for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                    setattr(new, key, value)
                new.train(child.training)
                parent._modules[name] = new
    return model


def drops_branches(model):
    """Whether a training forward of ``model`` may leave layers out at random (layers that say
    ``drops_branches``, such as stochastic depth's blocks)."""
    return any(getattr(m, "drops_branches", False) for m in model.modules())


def unused_parameters(model, input_shape):
    """Names of the trainable parameters that a training forward of ``model`` on a batch of
    ``input_shape`` leaves out of the graph (e.g. nasnet's unused adapters), found on the meta
    device: no memory, no computation, no random draw. BatchNorm layers run in eval mode there
    (no collective of SyncBatchNorm); their parameters are used in both modes."""
    from torch.func import functional_call
    params = {n: torch.empty_like(p, device="meta").requires_grad_() for n, p in
              model.named_parameters() if p.requires_grad}
    buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.training]
    for m in norms:
        m.eval()
    try:
        out = functional_call(model, {**params, **buffers},
                              (torch.empty(input_shape, device="meta"),))
    finally:
        for m in norms:
            m.train()
    out = out[0] if isinstance(out, (tuple, list)) else out
    grads = torch.autograd.grad(out.float().sum(), list(params.values()), allow_unused=True)
    return [n for n, g in zip(params, grads) if g is None]


def distributed_model(model, device, input_shape):
    """DistributedDataParallel around ``model`` under torchrun (gradients averaged over the
    processes during backward); the model itself otherwise.

    DDP must be told when a step may leave parameters without gradient: always for a network
    whose layers drop branches at random (``drops_branches``, stochastic depth: every process
    drops the same ones), and when a meta-device forward of ``input_shape`` (a batch) leaves some
    out. Otherwise its cheaper default stays.
    """
    if world()[1] == 1:
        return model
    ddp = torch.nn.parallel.DistributedDataParallel
    dynamic = drops_branches(model)
    unused = [] if dynamic else unused_parameters(model, input_shape)
    if dynamic or unused:
        print("=> DDP finds unused parameters at every step: "
            + ("some blocks are dropped at random (stochastic depth)" if dynamic else
               f"{len(unused)} parameter tensors take no part in a forward"), flush=True)
    # BatchNorm buffers already agree (statistics are global): no broadcast before each forward.
    # The option's name changed in recent torch versions.
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
           else "broadcast_buffers")
    return ddp(model, device_ids=[device] if device.type == "cuda" else None,
               find_unused_parameters=bool(dynamic or unused), **{key: False})
