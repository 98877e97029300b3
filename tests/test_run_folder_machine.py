"""The run folder as a state machine (issue 33): random sequences of the scripts' real commands on
one save dir, at toy size in this interpreter: SGD runs and reruns (sampled by epoch or every 2
steps; a SIGTERM inside an epoch checkpoints it there), P-SGD and P-BFGS runs with and
without tags, bases and a --basis-file, --resume, --overwrite, a P-SGD run from --resume-weights
PSGD.pt (a file a later P-SGD --overwrite rewrites), a SIGTERM at a random step or write, deleted
samples, damaged results and basis files. After every command:

- no command ends in a traceback (run_here lets any exception through) or another exit status
  than 0, 2 (refused) and 143 (SIGTERM);
- a finished run's files change only under --overwrite (SGD's moves the runs on the replaced
  samples into stale_*/, byte for byte) or --resume of that run (which continues it: its earlier
  epoch rows and its start are kept, and SGD's samples are never rewritten);
- a finished subspace run's last distance is the one from its true start (the sample, or the
  --resume-weights file as it was when the run began) to its saved model, recomputed here;
- summarize.py marks every results file without a final evaluation UNFINISHED, every stalled one
  STALLED, and a subspace run STALE exactly when a sample it was made from changed since, as this
  machine's own record of the folder says; a damaged results file is named, not a traceback.

pytest runs a few short sequences; .ci/run a long one (DLDR_MACHINE_STEPS, with its seed printed
and taken from DLDR_MACHINE_SEED to replay a failure)."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule,
                                 run_state_machine_as_test)

import summarize
import utils
from conftest import run_here, sigterm_during_step, write_mnist

SAMPLES = (0, 1, 2)  # the basis's samples (--params_end 3), sample 0 the restart
METHODS = {"psgd": "train_psgd.py", "pbfgs": "train_pbfgs.py"}
STOPS = st.one_of(*[st.none()] * 6, st.tuples(st.just("step"), st.integers(0, 2), st.integers(0, 2)),
                  st.tuples(st.just("write"), st.integers(1, 8)))
FLAGS = st.sampled_from(["", "--overwrite", "--resume"])


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_files(stem):
    """The files of the subspace run whose files carry ``stem``: results, final model,
    checkpoint (as the scripts name them)."""
    return utils.outputs_of(stem.partition("_")[0], stem)[:3]


def sgd_file(name):
    """Whether ``name`` is one of SGD's own files (its samples, results, checkpoint, record)."""
    return name[:-3].isdigit() or name in ("results_sgd.json", "checkpoint.pt", "run.json")


@contextlib.contextmanager
def sigterm_at(stop):
    """SIGTERM to this process at training step (epoch, i) or at the n-th file replaced by an
    atomic write (a signal that lands while a write is under way waits for it): the real signal
    path of run_main, as a cluster's preemption sends it."""
    if stop and stop[0] == "step":
        with sigterm_during_step(stop[1], stop[2]):
            yield
        return
    with pytest.MonkeyPatch.context() as mp:
        if stop:
            replace, count = os.replace, [0]

            def replaces(*args, **kwargs):
                count[0] += 1
                if count[0] == stop[1]:
                    os.kill(os.getpid(), signal.SIGTERM)
                return replace(*args, **kwargs)
            mp.setattr(os, "replace", replaces)
        yield


class RunFolder(RuleBasedStateMachine):
    DATA_ROOT = None  # set by the test: a small MNIST archive

    def __init__(self):
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="run_folder_")
        self.save = os.path.join(self.root, "s")
        self.weights_copy = os.path.join(self.root, "start_weights.pt")
        # path (relative to the save dir) -> digest, of every file of a finished run
        self.protected = {}
        # subspace run stem -> the digests of the samples it was made from, and its start
        self.made = {}
        self.history = []
        self.rewrites = 0
        self.model = utils.build_model("resnet8", "MNIST", 10, torch.device("cpu"))

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ what the folder holds
    def path(self, name):
        return os.path.join(self.save, name)

    def samples_now(self):
        return {n: digest(self.path(f"{n}.pt")) if os.path.exists(self.path(f"{n}.pt")) else None
                for n in SAMPLES}

    def results(self, name):
        try:
            with open(self.path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def vector(self, path):
        state = utils.load_state(path)
        return torch.cat([state[n].reshape(-1).double() for n, _ in self.model.named_parameters()])

    def snapshot(self):
        return {name: digest(self.path(name)) for name in self.protected
                if os.path.exists(self.path(name))}

    def stale_copies(self):
        found = {}
        for folder in os.listdir(self.save) if os.path.isdir(self.save) else []:
            if folder.startswith("stale_"):
                for name in os.listdir(self.path(folder)):
                    found.setdefault(name, set()).add(digest(os.path.join(self.path(folder), name)))
        return found

    # ------------------------------------------------------------------------- the commands
    def run(self, script, argv, stop):
        self.history.append(f"{script} {' '.join(map(str, argv))}" + (f"  [SIGTERM at {stop}]"
                                                                       if stop else ""))
        err = io.StringIO()
        with sigterm_at(stop), contextlib.redirect_stderr(err):
            code = run_here(script, *argv)
        self.history[-1] += f"  -> {code}" + (f" ({err.getvalue().strip()[-200:]})" if code else "")
        assert code in (0, 2, 143), f"exit status {code}: {self.history[-1]}"
        event(f"{script.split('_')[1][:-3]} exit {code}")
        return code

    def data(self):
        return ["--datasets", "MNIST", "--data-root", self.DATA_ROOT, "--arch", "resnet8",
                "--device", "cpu", "--print-freq", "100", "--randomseed", "1", "--save-dir",
                self.save]

    def check_protected(self, before, owners, flag, sgd_overwrite, continuing):
        """Every finished run's file unchanged, unless the command replaced (``flag``
        --overwrite) or continued (--resume) that run (``owners``: its files), or it was SGD's
        --overwrite, which moves the subspace runs' files to stale_*/ unchanged."""
        after, stale = self.snapshot(), self.stale_copies() if sgd_overwrite else {}
        for name, old in before.items():
            if after.get(name) == old:
                continue
            mine = name in owners
            if mine and flag == "--overwrite":
                continue
            if mine and flag == "--resume" and name in continuing:
                continue
            if sgd_overwrite and not sgd_file(name):
                assert old in stale.get(name, ()), f"{name} lost, not moved: {self.history[-1]}"
                continue
            raise AssertionError(f"finished run's {name} {'removed' if name not in after else 'changed'}"
                                 f" by {self.history[-1]}\nafter: " + "\n".join(self.history))

    @initialize()
    def samples(self):
        """A finished SGD run to start from (later rules rerun, extend, replace or damage it)
        and a P-SGD run on it."""
        self.sgd(2, "", None)
        self.rewrite_start_file(None)  # and a P-SGD run, whose model from_weights starts from
        assert os.path.exists(self.path("PSGD.pt")), self.history

    @rule(flag=FLAGS, stop=STOPS, every=st.sampled_from([0, 0, 2]))
    def sgd_command(self, flag, stop, every=0):
        """SGD for 2 epochs, or --resume'd to 3 (the same command twice is refused); with
        ``every``, sampled every 2 of its 3 steps an epoch (samples 0..3 in 2 epochs, 0..4 in 3;
        a resume of the other sampling is refused)."""
        self.sgd(3 if flag == "--resume" else 2, flag, stop, every)

    def sgd(self, epochs, flag, stop, every=0):
        before = self.snapshot()
        old_results = self.results("results_sgd.json")
        argv = [*self.data(), "--epochs", epochs, "--lr", "0.05", "--batch-size", "16"]
        if every:
            argv += ["--sample-every-steps", every]
        code = self.run("train_sgd.py", argv + ([flag] if flag else []), stop)
        self.check_protected(before, {n for n in self.protected if sgd_file(n)}, flag, flag == "--overwrite" and code != 2,
                             {"results_sgd.json", "checkpoint.pt"})
        if flag == "--resume" and code != 2 and old_results and "final" in old_results:
            self.check_continued(old_results, self.results("results_sgd.json"))
        if flag == "--overwrite" and code != 2:
            self.made.clear()  # the runs on the old samples were moved aside
            for name in [n for n in self.protected if not sgd_file(n)]:
                del self.protected[name]  # moved aside
            for name in [n for n in self.protected if n not in self.snapshot()]:
                del self.protected[name]
        sgd = self.results("results_sgd.json")
        if code == 0 and sgd and "final" in sgd:
            # (not checkpoint.pt: SGD's checkpoint is its own to update)
            for name in ["results_sgd.json"] + [
                    f"{e}.pt" for e in utils.available_samples(self.save)]:
                self.protected[name] = digest(self.path(name))

    def check_continued(self, old, new):
        """A resumed run continues the same run: its start and earlier epochs are kept."""
        assert new is not None, f"results lost by {self.history[-1]}"
        assert new.get("start") == old.get("start"), f"another start: {self.history[-1]}"
        rows = len(old["epochs"]) - 1  # the last row may be rewritten as the run goes on
        assert [e["epoch"] for e in new["epochs"][:rows]] == [e["epoch"] for e in old["epochs"][:rows]]
        assert [e["test_acc"] for e in new["epochs"][:rows]] == \
            [e["test_acc"] for e in old["epochs"][:rows]], f"rows rewritten: {self.history[-1]}"

    def subspace_command(self, method, basis, tag, flag, epochs, basis_file, weights, stop,
                         extra=()):
        name = utils.output_names(method, basis, tag).lock  # (the stem its files carry)
        files = run_files(name)
        argv = [*self.data(), "--params_start", 0, "--params_end", 3, "--n_components", 2,
                "--epochs", epochs, "--batch-size", 16, *extra]
        if basis != "dldr":
            argv += ["--basis", basis]
        if tag:
            argv += ["--output-tag", tag]
        if basis_file:
            argv += ["--basis-file", os.path.join(self.root, f"basis_{basis}.pt")]
        if weights and flag != "--resume":  # a resume continues from its checkpoint's record
            argv += ["--resume-weights", self.path("PSGD.pt")]
        before, old = self.snapshot(), self.results(files[0])
        samples, start = self.samples_now(), None
        if weights and os.path.exists(self.path("PSGD.pt")):
            start = self.vector(self.path("PSGD.pt"))
        elif samples[0] is not None:
            start = self.vector(self.path("0.pt"))
        code = self.run(METHODS[method], argv + ([flag] if flag else []), stop)
        self.check_protected(before, set(files), flag, False, set(files))
        if code == 2:
            return
        if flag != "--resume" or name not in self.made:
            self.made[name] = {"samples": samples, "start": start}
        new = self.results(files[0])
        if flag == "--resume" and old and "final" in old:
            self.check_continued(old, new)
        if code == 0 and new and "final" in new:
            true_start = self.made[name]["start"]
            assert true_start is not None, f"ran without its start: {self.history[-1]}"
            moved = (self.vector(self.path(files[1])) - true_start).norm().item()
            assert abs(new["epochs"][-1]["distance"] - moved) <= 1e-5 * max(moved, 1.0), (
                f"distance {new['epochs'][-1]['distance']} recorded, {moved} from the true start:"
                f" {self.history[-1]}\nafter: " + "\n".join(self.history))
            for f in files:
                if os.path.exists(self.path(f)):
                    self.protected[f] = digest(self.path(f))

    @rule(method=st.sampled_from(sorted(METHODS)), basis=st.sampled_from(["dldr", "random"]),
          tag=st.sampled_from([None, "t"]), flag=FLAGS, epochs=st.sampled_from([1, 2]),
          basis_file=st.booleans(), stop=STOPS)
    def subspace(self, method, basis, tag, flag, epochs, basis_file, stop):
        self.subspace_command(method, basis, tag, flag, epochs, basis_file, False, stop)

    @rule(flag=FLAGS, stop=STOPS, rewrite=st.booleans())
    def from_weights(self, flag, stop, rewrite):
        """P-SGD from PSGD.pt, the model of the untagged P-SGD run, which rewrite_start_file
        rewrites (issue 33 case 1): 1 epoch, --resume'd to 2; with ``rewrite`` the start file is
        rewritten first (a chain of three rules that a random draw of nine seldom makes)."""
        if rewrite:
            self.rewrite_start_file(None)
        if flag != "--resume" and not os.path.exists(self.path("PSGD.pt")):
            return  # (refused: nothing to learn)
        self.subspace_command("psgd", "dldr", "w", flag, 2 if flag == "--resume" else 1, False,
                              True, stop)

    @rule(stop=STOPS)
    def rewrite_start_file(self, stop):
        """P-SGD --overwrite of the untagged run at another lr: PSGD.pt, from_weights' start, is
        rewritten with other weights (another lr each time: the same command writes the same bytes)."""
        self.rewrites += 1
        self.subspace_command("psgd", "dldr", None, "--overwrite", 1, False, False, stop,
                              ("--lr", 1 / (1 + self.rewrites)))

    def has_subspace_runs(self):
        return os.path.isdir(self.save) and any(
            n.startswith("results_") and n != "results_sgd.json" for n in os.listdir(self.save))

    @precondition(has_subspace_runs)  # (before any, it only leaves the folder unusable sooner)
    @rule(n=st.sampled_from(SAMPLES + (3,)))
    def delete_sample(self, n):
        path = self.path(f"{n}.pt")
        if os.path.exists(path):
            os.remove(path)
            self.protected.pop(f"{n}.pt", None)
            self.history.append(f"rm {n}.pt")

    @rule(data=st.data())
    def damage_results(self, data):
        """A results file, or the samples' run.json, cut in half (a copy stopped half-way)."""
        names = sorted(n for n in os.listdir(self.save) if (n.startswith("results_") or
                       n == "run.json") and self.results(n) is not None) \
            if os.path.isdir(self.save) else []
        if not names:
            return
        name = data.draw(st.sampled_from(names))
        with open(self.path(name), "r+b") as f:
            f.truncate(os.path.getsize(self.path(name)) // 2)
        self.history.append(f"truncate {name}")
        if name == "run.json":  # the samples' record: every run on them is refused until
            return                # SGD --overwrite makes new ones (nothing to unprotect)
        if name == "results_sgd.json":  # the user damaged it: that run is no longer "finished"
            owned = [n for n in self.protected if sgd_file(n)]
        else:
            owned = run_files(name[len("results_"):-len(".json")])
        for n in owned:
            self.protected.pop(n, None)

    @rule(basis=st.sampled_from(["dldr", "random"]))
    def damage_basis_file(self, basis):
        path = os.path.join(self.root, f"basis_{basis}.pt")
        if os.path.exists(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
            self.history.append(f"truncate basis_{basis}.pt")

    # ----------------------------------------------------------------------------- invariants
    @invariant()
    def summarize_marks_every_run(self):
        names = sorted(n for n in os.listdir(self.save) if n.startswith("results_")
                       and n.endswith(".json")) if os.path.isdir(self.save) else []
        readable = {n: self.results(n) for n in names}
        if not any(isinstance(r, dict) and r.get("epochs") for r in readable.values()):
            return
        lines = summarize.table(self.save).splitlines()
        samples = self.samples_now()
        for name, run in readable.items():
            if not isinstance(run, dict) or not run.get("epochs"):
                assert any(name in line for line in lines), f"{name} damaged, not named: {lines}"
                continue
            marks = [line for line in lines if line.startswith(("UNFINISHED:", "STALLED:",
                                                                 "STALE:")) and f" {name}:" in line]
            kinds = {line.split(":")[0] for line in marks}
            assert ("UNFINISHED" in kinds) == ("final" not in run), (name, lines, self.history)
            stalled = bool((run.get("diagnostics") or {}).get("stalled"))
            assert ("STALLED" in kinds) == stalled, (name, lines)
            made = self.made.get(name[len("results_"):-len(".json")])
            if name != "results_sgd.json" and made is not None:
                changed = any(samples[n] != made["samples"][n] for n in SAMPLES)
                assert ("STALE" in kinds) == changed, (name, changed, lines, self.history)


def run_machine(data_root, steps, examples, seed=None):
    RunFolder.DATA_ROOT = data_root
    config = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                      derandomize=seed is None, database=None, print_blob=True,
                      suppress_health_check=list(HealthCheck))
    factory = RunFolder
    if seed is not None:
        class Seeded(RunFolder):
            pass
        Seeded._hypothesis_internal_use_seed = seed
        factory = Seeded
    run_state_machine_as_test(factory, settings=config)


@pytest.fixture(scope="module")
def machine_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("machine") / "data"
    write_mnist(root, n_train=40, n_test=12)
    return str(root)


def test_random_command_sequences_keep_the_run_folder_true(machine_data):
    run_machine(machine_data, steps=int(os.environ.get("DLDR_MACHINE_STEPS", 12)),
                examples=int(os.environ.get("DLDR_MACHINE_EXAMPLES", 3)),
                seed=int(os.environ["DLDR_MACHINE_SEED"]) if os.environ.get("DLDR_MACHINE_SEED")
                else None)


@pytest.mark.parametrize("steps", [
    # Issue 33 case 1: a --resume-weights run resumed after its start file was rewritten
    [("from_weights", ("", None, False)), ("rewrite_start_file", (None,)),
     ("from_weights", ("--resume", None, False))],
    # Case 7: SGD with its samples deleted, rerun without --overwrite, then with it
    [("subspace", ("pbfgs", "dldr", "t", "", 1, True, None)), ("delete_sample", (0,)),
     ("delete_sample", (1,)), ("delete_sample", (2,)),
     ("sgd_command", ("", None)), ("subspace", ("pbfgs", "dldr", "t", "--resume", 2, True, None)),
     ("sgd_command", ("--overwrite", None))],
    # Case 8 and a SIGTERM in a write: a resume of a finished run stopped, then finished
    [("subspace", ("psgd", "random", None, "", 1, False, None)),
     ("subspace", ("psgd", "random", None, "--resume", 2, False, ("write", 2))),
     ("subspace", ("psgd", "random", None, "--resume", 2, False, None)),
     ("damage_basis_file", ("dldr",)),
     ("subspace", ("pbfgs", "dldr", None, "", 2, True, ("step", 1, 0))),
     ("subspace", ("pbfgs", "dldr", None, "--resume", 2, True, None))],
])
def test_the_issues_sequences_through_the_machine(machine_data, steps):
    """The sequences issue 33 found by hand, run through the machine's rules and invariants
    (the random search reaches them too, but not in a few examples)."""
    RunFolder.DATA_ROOT = machine_data
    machine = RunFolder()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys.modules[__name__], "event", lambda *a: None)  # (outside a search)
            machine.samples()
            for name, args in steps:
                getattr(machine, name)(*args)
                machine.summarize_marks_every_run()
    finally:
        machine.teardown()
