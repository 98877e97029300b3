"""What the scripts print while they train, in the authors' formats and at the authors' moments:
the ``Epoch:`` and ``Test:`` lines, `` * Prec@1``, and the end-of-run lists. What this project adds
goes after the authors' fields on the same line (img/s, ETA, the test loss) or on lines of its
own that start with ``=> ``, so the authors' log parsers keep working."""
import datetime
import time

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum_, world
from .training import autocast, full_precision


def log(msg):
    print(msg, flush=True)


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class NonFiniteLoss(RuntimeError):
    pass


class EpochProgress:
    """One training epoch's meters and its ``Epoch: [e][i/n] Time .. Data .. Loss .. Prec@1 ..``
    lines, every ``print_freq`` batches (and at the last batch with ``print_last``, as the authors'
    subspace scripts did), followed by img/s and ETA.

    Loss and accuracy are summed on the device and read back only when a line is printed, so a
    fast GPU step is not stalled by a host synchronisation every iteration.
    """

    def __init__(self, epoch, num_batches, print_freq, epochs_left_after=0, print_last=True):
        self.epoch, self.n, self.print_freq = epoch, num_batches, print_freq
        self.epochs_left_after, self.print_last = epochs_left_after, print_last
        self.start = self.end = time.time()
        self.batch_time = self.data_time = 0.0  # sums, as the authors' AverageMeters
        self.batch_time_val = self.data_time_val = 0.0
        self.steps = self.fetches = 0
        self.loss_sum = self.correct = None
        self.unchecked = []  # the losses since the last finiteness check, on the device
        self.seen = 0
        self.first = self.seen_before = 0  # batches and images done before a mid-epoch resume
        self.processes = world()[1]  # img/s counts every process (rank 0's count times this)

    def batches(self, loader):
        """enumerate(loader), timing each batch's arrival (the Data field); in a run resumed
        inside the epoch, from batch ``self.first`` (the loader passes over those before)."""
        self.start = self.end = time.time()
        for i, batch in enumerate(loader, self.first):
            self.data_time_val = time.time() - self.end
            self.data_time += self.data_time_val
            self.fetches += 1
            yield i, batch

    def update(self, i, loss, output, target):
        """After the step on batch ``i``: ``loss`` and ``output`` of that batch."""
        now = time.time()
        self.batch_time_val, self.end = now - self.end, now
        self.batch_time += self.batch_time_val
        self.steps += 1
        n = target.shape[0]
        loss_sum = loss.detach().float() * n
        correct = (output.detach().argmax(1) == target).sum()
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.correct = correct if self.correct is None else self.correct + correct
        self.seen += n
        if i % self.print_freq == 0 or (self.print_last and i == self.n - 1):
            elapsed = now - self.start
            per_batch = elapsed / (i + 1 - self.first)
            eta = per_batch * (self.n - i - 1) + per_batch * self.n * self.epochs_left_after
            seen_here = self.seen - self.seen_before
            log(f"Epoch: [{self.epoch}][{i}/{self.n}]\t"
                f"Time {self.batch_time_val:.3f} ({self.batch_time / self.steps:.3f})\t"
                f"Data {self.data_time_val:.3f} ({self.data_time / max(self.fetches, 1):.3f})\t"
                f"Loss {loss.item():.4f} ({self.loss:.4f})\t"
                f"Prec@1 {100.0 * correct.item() / n:.3f} ({self.accuracy:.3f})\t"
                f"{seen_here * self.processes / max(elapsed, 1e-9):.0f} img/s\tETA {format_eta(eta)}")

    def check_all(self, i):
        """The losses kept since the last test, up to step ``i``, are finite (check_finite's
        test, and before a checkpoint inside the epoch)."""
        losses, self.unchecked = self.unchecked, []
        if losses and not torch.isfinite(torch.stack(losses)).all().item():
            raise NonFiniteLoss(f"non-finite loss at epoch {self.epoch}, by step {i}")

    # What a checkpoint inside the epoch keeps of the meters: the epoch's row is then the same
    _STATE = ("seen", "steps", "fetches", "batch_time", "data_time")

    def state_dict(self):
        state = {k: getattr(self, k) for k in self._STATE}
        state.update({k: None if getattr(self, k) is None else getattr(self, k).cpu()
                      for k in ("loss_sum", "correct")})
        return state

    def load_state_dict(self, state, device):
        for k in self._STATE:
            setattr(self, k, state[k])
        for k in ("loss_sum", "correct"):
            setattr(self, k, None if state[k] is None else state[k].to(device))
        self.seen_before = self.seen  # img/s counts the images of this start only

    def finish(self):
        """End of the epoch: under torchrun, loss, accuracy and images seen (and those seen before
        a resume inside the epoch) become the totals over all processes (the progress lines
        during the epoch show rank 0's share)."""
        if world()[1] > 1:
            device = self.loss_sum.device if self.loss_sum is not None else None
            totals = torch.tensor([0.0 if self.loss_sum is None else self.loss_sum.item(),
                                   0.0 if self.correct is None else float(self.correct.item()),
                                   float(self.seen), float(self.seen_before)],
                                  dtype=torch.float64, device=device)
            loss_sum, correct, seen, seen_before = all_reduce_sum_(totals).tolist()
            self.loss_sum, self.correct = torch.tensor(loss_sum), torch.tensor(correct)
            self.seen, self.seen_before = int(seen), int(seen_before)
        return self

    @property
    def loss(self):
        return self.loss_sum.item() / max(self.seen, 1) if self.seen else float("nan")

    @property
    def accuracy(self):
        return 100.0 * self.correct.item() / max(self.seen, 1) if self.seen else 0.0

    def check_finite(self, loss, i):
        """A non-finite loss stops the run: each step's loss is kept (no device work), and those
        kept are tested at once, read back with the progress lines and at the epoch's last
        batch, before anything of the epoch is written."""
        self.unchecked.append(loss.detach())
        if i % self.print_freq == 0 or i == self.n - 1:
            self.check_all(i)


@torch.no_grad()
def evaluate(model, loader, amp=None, print_freq=None):
    """(mean loss, top-1 accuracy in %) over a loader, model in eval mode. With ``print_freq``,
    the authors' ``Test: [i/n]`` line every ``print_freq`` batches (the caller prints the
    `` * Prec@1`` line): for the evaluations the authors' scripts make, not for this project's."""
    model.eval()
    seen = 0
    loss_acc = torch.zeros((), dtype=torch.float64)
    correct_acc = torch.zeros((), dtype=torch.int64)
    start = end = time.time()
    for i, (x, y) in enumerate(loader):
        with autocast(x.device, amp):
            out = model(x)
        batch_loss = F.cross_entropy(full_precision(out), y, reduction="sum").double()
        batch_correct = (out.argmax(1) == y).sum()
        loss_acc = loss_acc.to(out.device) + batch_loss
        correct_acc = correct_acc.to(out.device) + batch_correct
        seen += y.shape[0]
        if print_freq and i % print_freq == 0:
            now, n = time.time(), y.shape[0]
            log(f"Test: [{i}/{len(loader)}]\tTime {now - end:.3f} ({(now - start) / (i + 1):.3f})\t"
                f"Loss {batch_loss.item() / n:.4f} ({loss_acc.item() / seen:.4f})\t"
                f"Prec@1 {100.0 * batch_correct.item() / n:.3f} "
                f"({100.0 * correct_acc.item() / seen:.3f})")
        end = time.time()
    model.train()
    loss_sum, correct = loss_acc.item(), correct_acc.item()
    if world()[1] > 1:  # each process evaluated its shard of the test set
        totals = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64,
                              device=next(model.parameters()).device)
        loss_sum, correct, seen = all_reduce_sum_(totals).tolist()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def log_test(prec, loss):
    """The authors' line after each of their evaluations, with the test loss after their field."""
    log(f" * Prec@1 {prec:.3f}\tLoss {loss:.4f}")


def log_sgd_lists(epochs):
    """The authors' train_sgd.py end-of-run lists, one value per trained epoch (errors as
    fractions, times the training loop's seconds)."""
    trained = [e for e in epochs if "train_loss" in e]
    log(f"train loss:  {[e['train_loss'] for e in trained]}")
    log(f"train err:  {[1 - e['train_acc'] / 100 for e in trained]}")
    log(f"test loss:  {[e['test_loss'] for e in trained]}")
    log(f"test err:  {[1 - e['test_acc'] / 100 for e in trained]}")
    log(f"time:  {[e['train_time'] for e in trained]}")


def log_subspace_lists(epochs, total_time, best_prec1, epoch_times=False):
    """The authors' train_pbfgs.py / train_psgd.py end-of-run lines (accuracies in %); P-BFGS's
    also lists each epoch's time."""
    trained = [e for e in epochs if "train_loss" in e]
    log(f"total time: {total_time}")
    log(f"train loss:  {[e['train_loss'] for e in trained]}")
    log(f"train acc:  {[e['train_acc'] for e in trained]}")
    log(f"test loss:  {[e['test_loss'] for e in trained]}")
    log(f"test acc:  {[e['test_acc'] for e in trained]}")
    log(f"best_prec1: {best_prec1}")
    if epoch_times:
        log(f"epoch time: {[e['time'] for e in trained]}")
