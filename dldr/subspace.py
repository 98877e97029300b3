"""The run of a subspace script (P-BFGS, P-SGD), once for both: the checks before anything is
loaded or written, the data and model, the trajectory's basis, the restart from a sample, and
the life cycle of ``run.Run`` with the subspace's own start evaluation, coordinates and lines."""
import contextlib
import math
import os

import torch

from .batches import bn_loader, make_loader, test_batch_size
from .batchnorm import reestimate_bn
from .checkpoints import (StartWeights, fast_forward, find_resume_checkpoint,
                          load_start_weights, load_weights)
from .cli import UsageError
from .data import check_dataset_name, load_data
from .distributed import init_distributed, is_main_process, seed_processes, sync_batchnorm
from .evaluation import Evaluator
from .networks import build_model, check_arch_name
from .optim import FlatParameters
from .progress import log, log_subspace_lists
from .records import NOISE_RECORD, Results, check_noise_record, check_provenance
from .run import Outputs, Run, check_start_flags, samples_used
from .stall import stall_diagnostics, stall_line
from .samples import load_sample_into, load_state, param_vector_from_state, sample_path
from .training import (amp_mode, compile_model, make_deterministic, resolve_device,
                       seed_everything)
from .trajectory import Trajectory, build_basis, check_basis_file


def output_names(method, basis="dldr", tag=None, default_basis="dldr"):
    """The Outputs of a subspace run in the save dir: every file carries the method, the basis
    (unless it is the method's ``default_basis``) and the tag, so runs differing in any share
    the folder."""
    kind = "" if basis == default_basis else f"_{basis}"
    return outputs_of(method, f"{method}{kind}{f'_{tag}' if tag else ''}")


def outputs_of(method, stem):
    """The Outputs of the ``method`` run whose files carry ``stem`` (results_psgd_k5.json:
    PSGD_k5.pt, checkpoint_psgd_k5.pt), as output_names names them."""
    return Outputs(f"results_{stem}.json", f"{method.upper()}{stem[len(method):]}.pt",
                   f"checkpoint_{stem}.pt", stem)


def note_unchecked_noise(save_dir, corrupt):
    """Samples without a noise record (the authors' scripts kept theirs in a pickle of their own)
    cannot show which labels they were trained with: say so, and how these are drawn."""
    if corrupt > 0 and not os.path.exists(os.path.join(save_dir, NOISE_RECORD)):
        log(f"=> --corrupt {corrupt}: {save_dir} has no {NOISE_RECORD} (samples of the authors' "
            "scripts?), so these noisy labels cannot be checked against the trajectory's; they are "
            f"drawn from --randomseed: round({corrupt} N) positions chosen at random, new labels "
            "uniform over all classes")


def check_samples_run(o):
    """The checks of every run on the trajectory of ``o.save_dir`` (cli.SubspaceOptions): known
    names, the samples present, the samples' provenance, a writable folder. Returns the
    Trajectory of samples o.params_start, +o.params_step, ... < o.params_end."""
    check_arch_name(o.arch, o.datasets)
    check_dataset_name(o.datasets, o.data_root)
    trajectory = Trajectory(o.save_dir, o.params_start, o.params_end, o.params_step, o.arch)
    trajectory.check_present()
    check_provenance(o.save_dir, arch=o.arch, datasets=o.datasets, corrupt=o.corrupt,
                     smalldatasets=o.smalldatasets, randomseed=o.randomseed)
    if not os.access(o.save_dir, os.W_OK):
        raise UsageError(f"--save-dir {o.save_dir}: not writable; choose another folder")
    return trajectory


def load_data_and_model(o, device):
    """(train set, test set, model) of a run on the samples of ``o.save_dir``: the data with the
    trajectory's label noise, and a model of the samples' architecture."""
    note_unchecked_noise(o.save_dir, o.corrupt)
    seed_everything(o.randomseed)
    train_set, test_set = load_data(o.datasets, o.data_root, o.smalldatasets, o.corrupt,
                                    o.randomseed)
    check_noise_record(o.save_dir, train_set.noise)
    model = build_model(o.arch, o.datasets, train_set.num_classes, device, o.dtype)
    seed_processes(o.randomseed)  # under torchrun: each process its own dropout
    return train_set, test_set, model


@torch.no_grad()
def trajectory_reach(trajectory, model, w_start):
    """max_i ||w_i - w_start|| over the trajectory's samples w_i (their trainable parameters, in
    FlatParameters' order), in float64, one sample and one parameter at a time."""
    start = w_start.detach().cpu()
    names = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    reach = 0.0
    for path in trajectory.paths:
        state, offset = load_state(path, mmap=True), 0
        total = torch.zeros((), dtype=torch.float64)
        for name, n in names:
            total += (state[name].reshape(-1).double()
                      - start[offset:offset + n].double()).square().sum()
            offset += n
        reach = max(reach, math.sqrt(total.item()))
    return reach


def make_evaluator(o, model, eval_model, train_set, test_set, device, amp):
    """The Evaluator of a run: the test loader and the training images for BatchNorm."""
    test_loader = make_loader(test_set, test_batch_size(o.datasets, o.batch_size), device,
                              shuffle=False, kind=o.loader, workers=o.workers)
    return Evaluator(model, eval_model, test_loader,
                     bn_loader(train_set, o.batch_size, device, o.loader, o.workers), amp,
                     o.print_freq)


class SubspaceRun(Run):
    """A P-BFGS, P-SGD or TWA run (``method``, its ``title`` in the log) with ``options``
    (cli.SubspaceOptions) and the method's own ``settings`` (part of what defines the run). In
    the order ``main`` calls them: construction (every check that needs no heavy work; nothing
    loaded or written), ``prepare`` (data and model), ``build_basis``, ``restart``, then
    ``training`` (a context), ``epochs``, ``end_epoch`` and ``finish``."""

    def __init__(self, method, title, options, settings, epoch_times=False, default_basis="dldr"):
        o = self.options = options
        self.method, self.title, self.epoch_times = method, title, epoch_times
        self.settings = settings
        outputs = output_names(method, o.basis, o.output_tag, default_basis)
        check_start_flags(o.resume, o.overwrite, o.reuse, o.resume_weights, o.evaluate)
        self.trajectory = check_samples_run(o)
        check_basis_file(o.basis_file, o.evaluate)
        self.start = o.params_start if o.train_start is None else o.train_start
        if self.start != "mean" and not os.path.isfile(sample_path(o.save_dir, self.start)):
            raise UsageError(f"--train-start {self.start}: no sample {self.start}.pt in "
                             f"{o.save_dir}; use a sample present there, or mean")
        if settings.get("weight_decay") and self.start not in ("mean", *self.trajectory.epochs):
            raise UsageError(f"--train-start {self.start}: weight decay would take the weights out "
                             f"of the span of samples {self.trajectory.describe()}, which does "
                             "not hold this start; start from one of them or the mean, or use "
                             "--weight-decay 0")
        if o.basis == "dldr" and o.n_components >= len(self.trajectory):
            n = len(self.trajectory)
            raise UsageError(f"--n_components {o.n_components}: {n} samples "
                             f"({self.trajectory.describe()}) span at most {n - 1} directions; "
                             f"use --n_components <= {n - 1} or a wider sample range"
                             + (" or a smaller --params_step" if o.params_step > 1 else ""))
        if o.start_epoch >= o.epochs and not (o.evaluate or o.resume):
            raise UsageError(f"--start-epoch {o.start_epoch}: the run would train nothing with "
                             f"--epochs {o.epochs}; use --epochs > {o.start_epoch} (or -e to "
                             "evaluate the restart)")
        if o.resume:
            find_resume_checkpoint(o.resume, o.save_dir, outputs.checkpoint)
        # What defines the run: a checkpoint records it, and --resume must match it
        self.amp = amp_mode(o.amp, o.half, o.dtype)
        self.n_components = len(self.trajectory) if o.basis == "span" else o.n_components
        samples = self.trajectory.fingerprint()
        if self.start not in ("mean", *self.trajectory.epochs):  # the restart's file, too
            samples = Trajectory(o.save_dir, self.start, self.start + 1).fingerprint() + samples
        identity = dict(method=method, arch=o.arch, datasets=o.datasets, corrupt=o.corrupt,
                        smalldatasets=o.smalldatasets, randomseed=o.randomseed,
                        params_start=o.params_start, params_end=o.params_end,
                        params_step=o.params_step, basis=o.basis, n_components=self.n_components,
                        train_start=self.start, batch_size=o.batch_size, dtype=o.dtype,
                        amp=self.amp, loader=o.loader, samples=samples,
                        **settings)
        super().__init__(o.save_dir, outputs, identity, resume=o.resume, reuse=o.reuse,
                         epochs=o.epochs,
                         evaluating=o.evaluate, overwrite=o.overwrite,
                         resume_weights=o.resume_weights,
                         fingerprint=samples_used(self.trajectory, self.start))
        make_deterministic(o.deterministic)
        self.device = init_distributed(resolve_device(o.device))  # from here on only rank 0 prints
        self.first_gradient_norm = None  # diagnostics: the first step's, until its epoch's row

    def prepare(self):
        """The data (with the trajectory's label noise) and a model of the samples' architecture."""
        self.train_set, self.test_set, self.model = load_data_and_model(self.options, self.device)
        return self.model

    def build_basis(self):
        """The basis of the run (trajectory.build_basis), logged as the authors' scripts did."""
        o = self.options
        self.basis = build_basis(o.basis, self.trajectory, self.n_components, self.model,
                                 self.device, seed=o.randomseed, streaming=o.streaming_basis,
                                 basis_file=o.basis_file, save=not o.evaluate)
        self.basis.log()
        return self.basis

    def restart(self):
        """The model at the start (sample --train-start, by default params_start, or the
        samples' mean), its trainable parameters as one flat vector (returned), the basis on its
        device and dtype (``self.basis_matrix``), the compiled forward (``self.step_model``), the
        loaders, the evaluations and the results file."""
        o = self.options
        if self.start == "mean":
            self.trajectory.load_mean_into(self.model)
        else:
            load_sample_into(self.model, sample_path(o.save_dir, self.start), o.arch)
        model = self.model = sync_batchnorm(self.model, self.device)  # under torchrun: global BN
        self.flat = FlatParameters(model)  # before compiling: the compiled graph sees these views
        self.basis_matrix = self.basis.matrix.to(device=self.device,
                                                 dtype=self.flat.data.dtype).contiguous()
        self.basis.matrix = None  # the float64 original (k x D x 8 bytes) is not needed again
        self.step_model = compile_model(model, self.device, o.compile, o.compile_mode,
                                        o.compile_backend)
        self.train_loader = make_loader(self.train_set, o.batch_size, self.device, shuffle=True,
                                        kind=o.loader, workers=o.workers, seed=o.randomseed)
        self.evaluator = make_evaluator(o, model, self.step_model, self.train_set, self.test_set,
                                        self.device, self.amp)
        # Beside the command line ("args"), what was used: the basis's size, the schedule and
        # weight decay applied (TWA's milestones, none outside the span)
        self.results = Results(os.path.join(o.save_dir, self.outputs.results), self.method,
                               o.arguments, {**self.basis.record(), "train_start": self.start,
                                             **self.settings})
        self.w_start = self.flat.data.clone()  # the restart: coordinates are taken from here
        return self.flat

    def evaluate_only(self):
        """-e: the authors' evaluation of the --resume checkpoint's weights, or of the restart."""
        o = self.options
        if o.resume:
            load_weights(find_resume_checkpoint(o.resume, o.save_dir, self.outputs.checkpoint),
                         self.model)
        elif self.start == "mean" and reestimate_bn(self.model, self.evaluator.bn_loader):
            # training starts from the mean with these statistics, not the averaged ones
            log(f"=> the mean of samples {self.trajectory.describe()}, the start: BatchNorm "
                "statistics re-estimated on the training data, as training starts from it")
        self.evaluator.test()
        return self.model

    @contextlib.contextmanager
    def training(self, stateful, scheduler=None):
        """The part of the run that writes (``Run.writing``): resumed, or started with the
        restart's evaluation, its checkpoint and results. ``scheduler`` (P-SGD's) is stepped to
        --start-epoch on a fresh start, as the authors' ``last_epoch=start_epoch - 1``."""
        o = self.options
        start_weights = StartWeights()
        if self.identity.get("resumed_from_weights"):
            stateful = dict(stateful, start_weights=start_weights)
        with self.writing(model=self.model, stateful=stateful,
                          train_loader=self.train_loader, results=self.results,
                          evaluator=self.evaluator, start_epoch=o.start_epoch):
            weights = self.identity.get("resumed_from_weights")
            if weights:  # training starts from that file's weights: coordinates are taken there
                if not self.resumed:
                    start_weights.vector = self.flat.data.detach().clone()
                elif start_weights.vector is None:  # a checkpoint older than StartWeights
                    start_weights.vector = param_vector_from_state(
                        load_start_weights(weights)[1], self.model)
                self.w_start = start_weights.vector.to(self.flat.data)
            if not self.resumed:
                if scheduler is not None:
                    fast_forward(scheduler, o.start_epoch)
                # From the mean, training keeps the re-estimated statistics (TWA's BatchNorm update)
                mean = self.start == "mean"
                start = self.results.data["start"] = self.evaluator.twice(
                    f"the weights of {weights} (--resume-weights), the start" if weights else
                    f"the mean of samples {self.trajectory.describe()}, the start" if mean
                    else f"sample {self.start}, the restart", keep=mean and not weights)
                self.save_start(test_loss=start["test_loss"], test_acc=start["test_acc"],
                                time=0.0, coords=[0.0] * len(self.basis_matrix))
            # Only the results file (rank 0's) holds it: the other ranks do not read the samples
            self.reach = (trajectory_reach(self.trajectory, self.model, self.w_start)
                          if is_main_process() else None)
            yield self

    def watch_first_step(self, optimizer, projected, after=False):
        """Diagnostics: the norm of the first step's projected gradient, ``projected()`` read by
        a hook of ``optimizer`` before its step (P-SGD: P^T P g in the gradients) or ``after`` it
        (P-BFGS: the coordinates P g in its state), once on the device (no host sync: the epoch's
        end reads it); not in a resumed run, whose checkpoint's rows keep the first run's."""
        def hook(*_):
            handle.remove()
            if not self.resumed:
                self.first_gradient_norm = torch.linalg.vector_norm(projected().detach(),
                                                                    dtype=torch.float64)
        handle = (optimizer.register_step_post_hook if after
                  else optimizer.register_step_pre_hook)(hook)

    def epochs(self):
        log(f"Train: {(self.epoch, self.options.epochs)}")
        return super().epochs(self.options.epochs)

    def progress(self, epoch):
        return super().progress(epoch, self.options.epochs, self.options.print_freq)

    def end_epoch(self, progress, before=None, **after):
        """Run.end_epoch with the weights' coordinates in the basis (from the restart), their
        distance ||w - w_start|| from it and, in the first epoch's row, the first step's projected
        gradient norm: all read in one host sync."""
        moved = self.flat.data - self.w_start
        coords = self.basis_matrix @ moved
        extra = [torch.linalg.vector_norm(moved, dtype=torch.float64)]
        first = self.first_gradient_norm
        if first is not None:
            extra.append(first)
            self.first_gradient_norm = None
        values, k = torch.cat([coords.double(), torch.stack(extra)]).tolist(), len(coords)
        fields = dict(coords=values[:k], distance=values[k])
        if first is not None:
            fields["first_projected_grad_norm"] = values[k + 1]
        super().end_epoch(progress, self.options.bn_reestimate, before=before, **after, **fields)

    def finish(self):
        """The final evaluations (with the final weights' training loss), the diagnostics
        (``stall_diagnostics``: one line when the run stalled or the rule cannot tell), the model
        and the authors' end-of-run lists."""
        def diagnose(final):
            return stall_diagnostics(self.results.data["epochs"], self.reach,
                                     self.train_set.num_classes, final["train_loss"],
                                     self.options.corrupt)
        total = super().finish(keep_bn=self.options.bn_reestimate, diagnose=diagnose)
        log_subspace_lists(self.results.data["epochs"], total, self.best_prec1,
                           epoch_times=self.epoch_times)
        line = stall_line(self.results.data["diagnostics"])
        if line:
            log(line)
        self.done(self.title, f"model in {os.path.join(self.save_dir, self.outputs.model)}")
