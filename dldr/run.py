"""A run's life cycle, written once for the three scripts: resume or the start, the output lock,
every epoch's checkpoint before its sample and results, the signal-safe stop, the final
evaluations and the end-of-run lines (the scripts' entry point, ``run_main``: dldr/entry.py)."""
import contextlib
import json
import os
import time
from typing import NamedTuple

from . import files
from .checkpoints import (RunState, check_same_processes, check_same_run, checkpoint_state,
                          load_resume, load_start_weights, load_strictly, resume_run, saved_at)
from .cli import UsageError
from .distributed import all_reduce_max, is_main_process, world
from .files import (Interrupted, OutputLock, atomic_torch_save, make_dir, signals_at_step_ends,
                    take_pending_signal)
from .progress import EpochProgress, NonFiniteLoss, format_eta, log
from .records import samples_fingerprint
from .samples import available_samples, save_model, save_sample
from .sampling import SamplingPlan, record
from .training import peak_memory_bytes, reset_peak_memory


class Outputs(NamedTuple):
    """The files a run writes in its save dir (``model``: the final model, or None), the name of
    its lock, and how the lock's refusal names them (``what``; by default the file names)."""
    results: str
    model: str
    checkpoint: str
    lock: str
    what: str = None

    def describe(self):
        if self.what:
            return self.what
        names = [self.results] + ([self.model] if self.model else []) + [self.checkpoint]
        return ", ".join(names[:-1]) + f" and {names[-1]}"


def samples_used(trajectory, start=None):
    """What a results file records of the samples it was made from (``sample_fingerprint``): their
    numbers ("epochs": the trajectory's, and a --train-start sample outside it; with "steps",
    their global steps, when they were taken by step) and their SHA-256, which
    the readers (summarize.py, plot_results.py) compare with the samples in the folder now."""
    epochs = list(trajectory.epochs)
    if start is None or start == "mean" or start in epochs:
        used = {"epochs": epochs, "sha256": trajectory.fingerprint()}
    else:
        epochs.append(start)
        used = {"epochs": epochs, "sha256": samples_fingerprint(trajectory.save_dir, epochs)}
    if trajectory.steps:  # taken by step: each sample's global step too
        used["steps"] = [trajectory.steps.get(e) for e in epochs]
    return used


def finished_run(save_dir, outputs):
    """What of ``outputs`` in ``save_dir`` a new run would replace: "finished" (its results file
    has a final evaluation), "unfinished" (no final evaluation, but a checkpoint to resume), or
    None (nothing to lose: no results, or results of a run stopped before its first checkpoint)."""
    try:
        with open(os.path.join(save_dir, outputs.results)) as f:
            if "final" in json.load(f):
                return "finished"
    except (OSError, ValueError, TypeError):
        pass  # none, or unreadable: the checkpoint decides
    return "unfinished" if os.path.isfile(os.path.join(save_dir, outputs.checkpoint)) else None


def refuse_replacing(save_dir, outputs, resumable=True, tagged=True):
    """A new run (no --resume, no --overwrite) must not replace a finished or resumable run's
    files: one line saying what is there and the flags that continue or replace it (``tagged``:
    the script has --output-tag)."""
    state = finished_run(save_dir, outputs)
    if state is None:
        return
    held = (f"a finished run ({outputs.describe()})" if state == "finished" else
            f"an unfinished run ({outputs.checkpoint} holds it)")
    keep = ("pass --resume to continue it" if state == "unfinished" else
            "pass --resume with more --epochs to extend it") if resumable else ""
    raise UsageError(f"--save-dir {save_dir} already holds {held}; {keep + ', ' if keep else ''}"
                     "pass --overwrite to replace it, or use another "
                     f"{'--output-tag or ' if tagged else ''}--save-dir")


SGD_OUTPUTS = Outputs("results_sgd.json", None, "checkpoint.pt", "sgd",
                      "samples, checkpoint.pt and results_sgd.json")


def check_start_flags(resume, overwrite, reuse, resume_weights, evaluating):
    """The flags that say how a run starts must not contradict each other (one line, exit 2)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")
    if reuse and (resume or overwrite or resume_weights or evaluating):
        other = ("--resume" if resume else "--overwrite" if overwrite else
                 "--resume-weights" if resume_weights else "-e")
        raise UsageError(f"--reuse and {other} contradict each other; choose one")


class Run:
    """One run writing into ``save_dir``: its outputs, its resume, its epochs.

    Constructing it writes nothing (it only asks whether another run holds the outputs' lock).
    ``writing(...)`` is the part of the run that writes: it resumes from ``resume`` (a checkpoint
    already loaded) or leaves the start to the caller (``save_start``), takes the lock, and turns
    a signal, a failed write or a non-finite loss into one line that says what is saved.
    ``epochs`` then yields the epochs to train and ``end_epoch`` evaluates each and writes its
    checkpoint, then its sample (``sample_dir``: SGD's trajectory), then its results. Inside an
    epoch, ``after_step`` writes the samples and checkpoints a SamplingPlan asks for after a step,
    and a checkpoint before a signal stops the steps (``stepping``).
    """

    def __init__(self, save_dir, outputs, identity, *, resume=None, epochs=None, evaluating=False,
                 sample_dir=None, keep_every=None, overwrite=False, resume_weights=None,
                 fingerprint=None, reuse=False):
        self.save_dir, self.outputs, self.identity = save_dir, outputs, identity
        self.sample_dir, self.keep_every = sample_dir, keep_every
        self.overwrite, self.fingerprint = overwrite, fingerprint
        self.last_test = None  # the last epoch's authors' evaluation, while the weights are its
        self.lock = OutputLock(save_dir, outputs.lock, outputs.describe())
        self.resume = self.weights = None  # (path, checkpoint) to continue; (path, state) to start
        self.kept = False  # --reuse found this run finished: nothing to do
        check_start_flags(resume, overwrite, reuse, resume_weights, evaluating)
        if resume_weights and (resume or evaluating):
            raise UsageError("--resume-weights starts a new run from a file's weights: not with "
                             + ("--resume, which continues a run; choose one" if resume else
                                "-e, which evaluates --resume PATH's weights"))
        if not evaluating:
            self.lock.check()
            if reuse:
                self.kept = self._reuse(epochs)
            elif resume:
                # The authors' checkpoints continue their SGD trajectory only (train_sgd.py)
                self.resume = load_resume(resume, save_dir, outputs.checkpoint,
                                          authors=sample_dir is not None)
                check_same_run(*self.resume, identity, epochs)
                check_same_processes(*self.resume)
            elif not overwrite and sample_dir is None:  # train_sgd.py: its samples say it
                refuse_replacing(save_dir, outputs)
            if resume_weights:
                self.weights = load_start_weights(resume_weights)
                identity["resumed_from_weights"] = resume_weights
        self.state = RunState(os.path.join(save_dir, outputs.checkpoint))
        self.epoch, self.best_prec1, self.resumed = 0, 0.0, False
        self.sampling = SamplingPlan()  # one sample (and checkpoint) an epoch, at its end
        self.inside = None  # (batches done, meters) of the epoch a checkpoint stopped inside

    @property
    def continuing(self):
        """Whether the run continues a checkpoint (--resume, or --reuse of an unfinished run)."""
        return self.resume is not None

    def _reuse(self, epochs):
        """--reuse: what the save dir holds of this run decides. Finished with the same settings,
        samples and --epochs: kept (returns True); unfinished, or finished with fewer epochs:
        resumed; none: started; another run: refused, naming what differs."""
        state = finished_run(self.save_dir, self.outputs)
        if state is None:
            return False
        path = os.path.join(self.save_dir, self.outputs.checkpoint)
        if not os.path.isfile(path):
            raise UsageError(f"--reuse: {os.path.join(self.save_dir, self.outputs.results)} holds "
                             f"a finished run but {self.outputs.checkpoint}, which records its "
                             "settings, is gone; pass --overwrite to replace the run, or use "
                             "another --output-tag or --save-dir")
        self.resume = load_resume(path, self.save_dir, self.outputs.checkpoint)
        check_same_run(*self.resume, self.identity, epochs, flag="--reuse")
        done = int(self.resume[1].get("epoch", 0))
        if state == "finished" and done == epochs:
            self.resume = None  # nothing to continue: the checkpoint's memory is free again
            if is_main_process():
                log(f"=> --reuse: {self.save_dir} already holds this run, finished "
                    f"({self.outputs.results}, {done} epochs, the same settings and samples); "
                    "kept as it is (--overwrite redoes it)")
            return True
        check_same_processes(*self.resume)
        if is_main_process():
            log(f"=> --reuse: continuing the {state} run in {path} (epoch {done} of {epochs})")
        return False

    def writing(self, *, model, stateful, train_loader, results, evaluator, start_epoch,
                sampling=None):
        """The context of the part of the run that writes: it continues the checkpoint of
        --resume (checked at construction to be this run's), or starts at ``start_epoch``;
        ``stateful`` maps names to the objects whose state a checkpoint keeps; ``sampling``: a
        SamplingPlan of samples and checkpoints inside the epochs."""
        self.model, self.stateful, self.train_loader = model, stateful, train_loader
        self.results, self.evaluator = results, evaluator
        self.epoch = start_epoch
        if sampling is not None:
            self.sampling = sampling
        if self.resume is not None:
            self.epoch, self.best_prec1, batch, meters = resume_run(
                *self.resume, model, stateful, train_loader, results)
            self.inside = (batch, meters) if batch else None
            self.resume, self.resumed = None, True  # the checkpoint's memory is free again
            if self.sampling.by_step and "samples" not in results.data:
                raise UsageError("--sample-every-steps: the checkpoint resumed holds a run that "
                                 "sampled by epoch (or an authors' checkpoint); resume it without "
                                 "--sample-every-steps, or start a new run in another --save-dir")
        elif self.weights is not None:
            path, state = self.weights
            load_strictly(model, state, f"--resume-weights {path}")
            self.weights = None
            log(f"=> starting from the weights of {path} (--resume-weights); the optimizer, "
                "schedule and data order start afresh")
        if self.sampling.by_step:
            plan = self.sampling
            results.data["sampling"] = {"every_steps": plan.every, "rule": plan.rule,
                                        "batches_per_epoch": plan.batches}
        if self.fingerprint is not None:
            results.data["sample_fingerprint"] = self.fingerprint
        if "resumed_from_weights" in self.identity:
            results.data["resumed_from_weights"] = self.identity["resumed_from_weights"]
        self.first_epoch = self.epoch
        self.device = next(model.parameters()).device
        reset_peak_memory(self.device)
        return self._writing()

    @contextlib.contextmanager
    def _writing(self):
        if is_main_process():
            make_dir(self.save_dir)
        self.lock.acquire()
        try:
            with self.state.guard():
                if self.overwrite and not self.resumed and is_main_process():
                    remove_outputs(self.save_dir, self.outputs)
                if self.resumed:
                    batch = self.inside[0] if self.inside else 0
                    self.state.saved = saved_at(self.epoch, batch)
                    sample = self._sample_of_checkpoint(batch)
                    if sample is not None and sample not in available_samples(self.sample_dir):
                        save_sample(self.model, self.sample_dir, sample)  # its write failed
                    # A finished run extended keeps its results (final evaluation, diagnostics)
                    # until its next epoch replaces them: a resume that fails loses nothing
                    if finished_run(self.save_dir, self.outputs) != "finished":
                        self.results.save()  # the checkpoint's, where that write failed
                yield self
        except NonFiniteLoss as e:  # and P-BFGS's NonFiniteError
            kept = (f"samples up to {self.state.epoch}.pt are kept in {self.save_dir}"
                    if self.sample_dir else f"the last good state is in {self.outputs.checkpoint}")
            self.results.data["stopped"] = str(e)  # readers mark the run: not a finished one
            self.results.save()
            raise SystemExit(f"error: {e}; {kept}")

    def _sample_of_checkpoint(self, batch):
        """The sample written just after the checkpoint resumed from (``batch`` batches into epoch
        ``self.epoch``), or None: the one a failed write may have left missing."""
        if not self.sample_dir:
            return None
        if not self.sampling.by_step:
            return None if batch else self.epoch
        last = self.results.data["samples"][-1]
        at = self.epoch * self.sampling.batches + batch
        return last["sample"] if last["step"] == at else None

    def save_start(self, **row):
        """The start's results row (epoch ``self.epoch``), after its checkpoint and sample; taken
        by step, the samples' record begins (0.pt at step 0)."""
        if self.sampling.by_step:
            self.results.data["samples"] = [record(0, self.epoch, None,
                                                   self.epoch * self.sampling.batches)]
            self._save(dict(epoch=self.epoch, **row), sample=0)
        else:
            self._save(dict(epoch=self.epoch, **row),
                       sample=self.epoch if self.sample_dir else None)

    def epochs(self, end):
        """The epochs still to train, up to ``end``; the run is trained once they are done."""
        self.run_start = time.time()
        for epoch in range(self.epoch, end):
            self.state.epoch = epoch
            self.epoch_start = time.time()
            self.last_test = None  # the weights change: the last evaluation no longer reads them
            yield epoch
        self.state.trained = True

    def progress(self, epoch, end, print_freq, print_last=True):
        """The meters of epoch ``epoch``; in the epoch a checkpoint stopped inside, as they were."""
        self.meters = EpochProgress(epoch, len(self.train_loader), print_freq, end - epoch - 1,
                                    print_last=print_last)
        if self.inside is not None:
            (self.meters.first, state), self.inside = self.inside, None
            self.meters.load_state_dict(state, self.device)
        return self.meters

    def stepping(self):
        """Around an epoch's steps: a signal waits for the step under way to end, where
        ``after_step`` checkpoints the run before it stops."""
        return signals_at_step_ends(agreed=world()[1] > 1)

    def after_step(self, batch):
        """After the step on batch ``batch`` of the epoch under way: the sample and the
        checkpoint the SamplingPlan asks for there, and a stop a signal asked for during the
        step, after a checkpoint of this step. The sample's record goes into the checkpoint
        before the sample is written: a resume finds the sample or writes it again."""
        epoch, plan = self.state.epoch, self.sampling
        due = plan.checkpoint_due(epoch, batch)
        signum = self._signal(batch, due)
        if not (signum or due):
            return
        self.meters.check_all(batch)  # no checkpoint of weights a non-finite loss has spoilt
        sample = None
        if plan.sample_due(epoch, batch):
            sample = self.results.data["samples"][-1]["sample"] + 1
            self.results.data["samples"].append(record(sample, epoch, batch,
                                                       plan.step(epoch, batch)))
        self.state.save(checkpoint_state(self.epoch, self.model, self.stateful,
                                         self.train_loader, self.best_prec1, self.results,
                                         self.identity, batch=batch + 1, progress=self.meters))
        if sample is not None:
            save_sample(self.model, self.sample_dir, sample)
        self.results.save()
        if signum:
            raise Interrupted(signum, after_write=True)

    def _signal(self, batch, checkpoint_due):
        """The signal that asks the run to stop after this step, or None. Under torchrun the
        processes agree (one collective) at the steps where a line is printed or a checkpoint is
        due, the epoch's last included: every process stops at the same step."""
        if world()[1] == 1:
            return take_pending_signal()
        meters = self.meters
        if not (batch % meters.print_freq == 0 or batch == meters.n - 1 or checkpoint_due):
            return None
        return all_reduce_max(take_pending_signal() or 0, self.device) or None

    def end_epoch(self, progress, reestimate=False, *, before=None, **after):
        """After an epoch's training: the authors' evaluation (and with ``reestimate`` the
        BatchNorm re-estimated one), then its row of results (``before`` and ``after`` are the
        script's own fields, around the times), its checkpoint, sample and results."""
        train_time = time.time() - self.epoch_start
        test_loss, prec1, bn_fields = self.evaluator.after_epoch(reestimate)
        self.last_test = (test_loss, prec1)  # of the weights as they are: finish reuses it
        self.best_prec1 = max(self.best_prec1, prec1)
        row = dict(epoch=self.state.epoch + 1, train_loss=progress.loss,
                   train_acc=progress.accuracy, test_loss=test_loss, test_acc=prec1,
                   **(before or {}), train_time=train_time, time=time.time() - self.epoch_start,
                   images_per_s=(progress.seen - progress.seen_before) / max(train_time, 1e-9),
                   **after, **bn_fields)
        by_step = self.sampling.by_step
        ckpt = self._save(row, sample=row["epoch"] if self.sample_dir and not by_step else None)
        if self.keep_every and row["epoch"] % self.keep_every == 0:
            atomic_torch_save(ckpt, os.path.join(self.save_dir, f"checkpoint_{row['epoch']}.pt"))

    def _save(self, row, sample=None):
        self.epoch = row["epoch"]
        self.results.add(save=False, **row)
        ckpt = checkpoint_state(self.epoch, self.model, self.stateful, self.train_loader,
                                self.best_prec1, self.results, self.identity)
        self.state.save(ckpt)  # first: it holds the weights, so no failure loses the epoch
        if sample is not None:
            save_sample(self.model, self.sample_dir, sample)
        self.results.save()
        return ckpt

    def finish(self, keep_bn=False, diagnose=None):
        """The final weights judged twice (the authors' way, and with BatchNorm statistics
        re-estimated, which the model keeps with ``keep_bn``) with their training loss, the
        results (with ``diagnose(final)`` as their diagnostics), the final model."""
        final = self.results.data["final"] = self.evaluator.twice(
            "final", keep=keep_bn, authors=self.last_test, train=True)
        if diagnose is not None:
            self.results.data["diagnostics"] = diagnose(final)
        self.results.data["peak_memory_bytes"] = peak_memory_bytes(self.device)
        self.results.save()
        if self.outputs.model:
            save_model(self.model, os.path.join(self.save_dir, self.outputs.model))
        return time.time() - self.run_start

    def done(self, method, where):
        log(f"=> {method} done: best Prec@1 {self.best_prec1:.3f}, total time "
            f"{format_eta(time.time() - self.run_start)}, {where}")


def remove_outputs(save_dir, outputs):
    """--overwrite: the replaced run's results, final model and checkpoint go before the new run
    writes, so that no file of the old run stays beside the new one's."""
    for name in (outputs.results, outputs.model, outputs.checkpoint):
        path = os.path.join(save_dir, name) if name else None
        try:
            if path and os.path.lexists(path):
                os.unlink(path)
        except OSError as e:
            raise files.WriteError(f"{path}: cannot remove it ({e.strerror})") from None
