"""When train_sgd.py samples its trajectory and checkpoints inside an epoch: after every epoch
(the default, the paper's CIFAR setting), every N optimizer steps counted across epochs
(``--sample-every-steps N``), or by the authors' ImageNet rule (their main.py:
``if i % 1000 == 0`` after the step on batch ``i`` of each epoch, so the spacing restarts at every
epoch boundary). Samples are numbered 0, 1, 2, ... in every case (0.pt before training), and the
results file records the epoch and global step of each (``record``)."""

RULES = ("steps", "authors-imagenet")


class SamplingPlan:
    """Which steps of a run write a sample and which a checkpoint.

    Args:
        every (int): sample every this many steps; 0 samples at the end of every epoch.
        rule (str): "steps" (after global steps N, 2N, ...) or "authors-imagenet" (after the
            step on batch i of each epoch where i % N == 0, as the authors' main.py).
        checkpoint_every (int or None): a checkpoint every this many global steps inside the
            epochs as well; None: at every sample when sampling by step, else at epoch ends only.
        batches (int): batches per epoch.
    """

    def __init__(self, every=0, rule="steps", checkpoint_every=None, batches=1):
        if every < 0 or (checkpoint_every is not None and checkpoint_every < 0):
            raise ValueError("every and checkpoint_every count steps: 0 or more")
        if rule not in RULES:
            raise ValueError(f"rule {rule!r}: one of {', '.join(RULES)}")
        if batches < 1:
            raise ValueError("an epoch has at least one batch")
        self.every, self.rule, self.batches = every, rule, batches
        self.checkpoint_every = checkpoint_every or 0

    @property
    def by_step(self):
        return self.every > 0

    def step(self, epoch, batch):
        """The global step after the step on batch ``batch`` of epoch ``epoch`` (both from 0)."""
        return epoch * self.batches + batch + 1

    def sample_due(self, epoch, batch):
        """Whether the step on batch ``batch`` of epoch ``epoch`` is followed by a sample."""
        if not self.every:
            return False
        if self.rule == "steps":
            return self.step(epoch, batch) % self.every == 0
        return batch % self.every == 0

    def checkpoint_due(self, epoch, batch):
        """Whether that step is followed by a checkpoint (a sample always is)."""
        return self.sample_due(epoch, batch) or bool(
            self.checkpoint_every and self.step(epoch, batch) % self.checkpoint_every == 0)

    def samples_in(self, epochs):
        """How many samples ``epochs`` epochs give, 0.pt included."""
        if not self.every:
            return epochs + 1
        if self.rule == "steps":
            return epochs * self.batches // self.every + 1
        return epochs * ((self.batches - 1) // self.every + 1) + 1

    def describe(self):
        if not self.every:
            return "a sample after every epoch"
        if self.rule == "steps":
            return f"a sample every {self.every} steps"
        return (f"a sample after batch 0, {self.every}, {2 * self.every}, ... of every epoch "
                "(the authors' ImageNet rule)")


def record(sample, epoch, batch, step):
    """The results file's entry of a sample taken by step: its number, the epoch under way and
    the batch of it (None for 0.pt, before training), and the global step."""
    return {"sample": sample, "epoch": epoch, "batch": batch, "step": step}


def steps_by_sample(taken):
    """{sample number: global step} from a results file's ``samples`` record (``record``'s
    entries); None without one (samples taken by epoch)."""
    return {int(s["sample"]): int(s["step"]) for s in taken} if taken else None


def sample_steps(save_dir):
    """``steps_by_sample`` of the trajectory in ``save_dir``, from its results_sgd.json; None for
    one sampled by epoch (or without a readable record: an authors' folder)."""
    import json
    import os
    try:
        with open(os.path.join(save_dir, "results_sgd.json")) as f:
            return steps_by_sample(json.load(f).get("samples"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def describe_steps(steps, samples):
    """' (steps 0..50000)': the global steps of ``samples`` (sample numbers) where ``steps`` (a
    sample_steps map) knows them; '' otherwise."""
    known = [steps[s] for s in samples if steps and s in steps]
    if not known:
        return ""
    return f" (step {known[0]})" if len(known) == 1 else f" (steps {known[0]}..{known[-1]})"
