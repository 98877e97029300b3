"""The training loop's tools: seeding, devices and precision, progress lines, evaluation."""
import datetime
import time

import torch
import torch.nn.functional as F

from .cli import UsageError
from .distributed import all_reduce_sum_, world


def log(msg):
    print(msg, flush=True)


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def seed_everything(seed):
    """Seed torch's generators: initialisation, dropout and the data order all draw from them
    (the label noise has its own generator, see data.noisy_labels)."""
    torch.manual_seed(seed)


def resolve_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def amp_mode(amp, half, dtype):
    """The autocast precision of --amp / --half: "bf16", "fp16" or None."""
    amp = amp or ("fp16" if half else None)
    if amp and dtype == "float64":
        raise UsageError(f"--dtype float64 and --amp {amp} (or --half) contradict each other; "
                         "choose one")
    return amp


def autocast(device, amp):
    """bf16/fp16 autocast on the device when asked, else a no-op context."""
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def full_precision(output):
    """Logits for the loss: low-precision (autocast) outputs in float32, others as they are."""
    return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output


def compile_model(model, device, enabled, mode=None, backend="inductor"):
    """``--compile``: the module that runs forward passes; ``model`` keeps the parameters and state."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if not enabled:
        return model
    if backend != "inductor":
        return torch.compile(model, backend=backend)  # modes are inductor options
    # CUDA graphs for the fixed-shape steps; not under torchrun, where DDP's gradient all-reduce
    # hooks run inside the backward pass (untested with graph capture, so left out by default).
    graphs = device.type == "cuda" and world()[1] == 1
    return torch.compile(model, mode=mode or ("reduce-overhead" if graphs else None))


def step_marker(device, compiled):
    """A function to call before each training forward: with CUDA graphs it tells torch that a new
    iteration begins (so outputs of the last one may be reused); a no-op otherwise."""
    if compiled and device.type == "cuda":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


class NonFiniteLoss(RuntimeError):
    pass


class EpochProgress:
    """The authors' progress line, ``Epoch: [e][i/n] Time .. Loss .. Prec@1 ..``, plus img/s and ETA.

    Loss and accuracy are accumulated on the device and read back only at print time, so a fast
    GPU step is not stalled by a host synchronisation every iteration.
    """

    def __init__(self, epoch, num_batches, print_freq, epochs_left_after=0, header="Epoch"):
        self.epoch, self.n, self.print_freq = epoch, num_batches, print_freq
        self.epochs_left_after = epochs_left_after
        self.header = header
        self.start = self.last = time.time()
        self.printed = 0  # batches done at the last progress line
        self.loss_sum = self.correct = None
        self.seen = 0
        self.processes = world()[1]  # img/s counts every process (rank 0's count times this)

    def update(self, i, loss, output, target):
        n = target.shape[0]
        loss_sum = loss.detach().float() * n
        correct = (output.detach().argmax(1) == target).sum()
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.correct = correct if self.correct is None else self.correct + correct
        self.seen += n
        if i % self.print_freq == 0 or i == self.n - 1:
            now = time.time()
            elapsed, done = now - self.start, i + 1
            recent = (now - self.last) / max(done - self.printed, 1)  # per batch since last line
            self.last, self.printed = now, done
            per_batch = elapsed / done
            eta = per_batch * (self.n - done) + per_batch * self.n * self.epochs_left_after
            log(f"{self.header}: [{self.epoch}][{i}/{self.n}]\t"
                f"Time {recent:.3f} ({per_batch:.3f})\t"
                f"Loss {loss.item():.4f} ({self.loss:.4f})\t"
                f"Prec@1 {100.0 * correct.item() / n:.3f} ({self.accuracy:.3f})\t"
                f"{self.seen * self.processes / max(elapsed, 1e-9):.0f} img/s\tETA {format_eta(eta)}")

    def finish(self):
        """End of the epoch: under torchrun, loss, accuracy and images seen become the totals
        over all processes (the progress lines during the epoch show rank 0's share)."""
        if world()[1] > 1:
            device = self.loss_sum.device if self.loss_sum is not None else None
            totals = torch.tensor([0.0 if self.loss_sum is None else self.loss_sum.item(),
                                   0.0 if self.correct is None else float(self.correct.item()),
                                   float(self.seen)], dtype=torch.float64, device=device)
            loss_sum, correct, seen = all_reduce_sum_(totals).tolist()
            self.loss_sum, self.correct = torch.tensor(loss_sum), torch.tensor(correct)
            self.seen = int(seen)
        return self

    @property
    def loss(self):
        return self.loss_sum.item() / max(self.seen, 1) if self.seen else float("nan")

    @property
    def accuracy(self):
        return 100.0 * self.correct.item() / max(self.seen, 1) if self.seen else 0.0

    def check_finite(self, loss, i):
        if not torch.isfinite(loss).item():
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {self.epoch}, step {i}")


@torch.no_grad()
def evaluate(model, loader, amp=None):
    """(mean loss, top-1 accuracy in %) over a loader, model in eval mode."""
    model.eval()
    seen = 0
    loss_acc = torch.zeros((), dtype=torch.float64)
    correct_acc = torch.zeros((), dtype=torch.int64)
    for x, y in loader:
        with autocast(x.device, amp):
            out = model(x)
        loss_acc = loss_acc.to(out.device) + F.cross_entropy(full_precision(out), y, reduction="sum").double()
        correct_acc = correct_acc.to(out.device) + (out.argmax(1) == y).sum()
        seen += y.shape[0]
    model.train()
    loss_sum, correct = loss_acc.item(), correct_acc.item()
    if world()[1] > 1:  # each process evaluated its shard of the test set
        totals = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64,
                              device=next(model.parameters()).device)
        loss_sum, correct, seen = all_reduce_sum_(totals).tolist()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def log_test(prec, loss):
    log(f" * Prec@1 {prec:.3f}\tLoss {loss:.4f}")
