"""Which runs experiments/digits.sh can reuse: a run is done when its results file has a final
evaluation, was made with every setting of the command that would make it now (the results'
own record of its arguments, parsed as the script parses that command) and from the samples now in
its folder, on the CPU kernels this process runs (the same capability, pin and threads:
dldr.kernels; the scripts run in this process's environment).

    experiments/digits.sh's jobs on stdin, one a line: RESULTS<TAB>CHECKPOINT<TAB>SCRIPT ARG...
    python experiments/reuse.py < jobs

prints one line a job: STATUS<TAB>RESULTS<TAB>WHY, STATUS one of done (reuse it), resume (the same
run, unfinished: continue it from CHECKPOINT) and fresh (not made yet, or made otherwise: run it
again, replacing what is there). One process for all the jobs: the scripts are imported once.
"""
import functools
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dldr.cli import FromRecord, recorded_defaults  # noqa: E402
from dldr.kernels import kernel_set  # noqa: E402
from dldr.records import stale_reason  # noqa: E402

# What of the kernel set changes a run's digits on one machine (docs/speed.md)
KERNEL_KEYS = ("cpu_capability", "pinned", "threads")


def other_kernels(recorded, here):
    """How the kernel set ``recorded`` in a results file (None before they were recorded)
    differs from ``here``'s, as "name recorded -> here"."""
    if not isinstance(recorded, dict):
        return ["kernels not recorded (an older run)"]
    return [f"{k} {recorded.get(k)!r} -> {here[k]!r}" for k in KERNEL_KEYS
            if recorded.get(k) != here[k]]

# Flags that do not change what a run computes (where it is, how often it prints, how it starts)
NOT_DEFINING = {"save_dir", "data_root", "print_freq", "workers", "resume", "overwrite",
                "evaluate", "basis_file"}


# The script that writes a results file, by the file's "method"
SCRIPTS = {"sgd": "train_sgd.py", "psgd": "train_psgd.py", "pbfgs": "train_pbfgs.py",
           "twa": "train_twa.py", "swa": "swa.py"}


@functools.lru_cache(maxsize=None)
def parser_of(script):
    """``script``'s (SCRIPT.py) argument parser."""
    return importlib.import_module(os.path.basename(script)[:-3]).build_parser()


def parse(argv):
    """(the arguments ``argv`` = [SCRIPT.py, ARG...] gives, as a results file records them (JSON
    values), the script's parser)."""
    parser = parser_of(argv[0])
    values = vars(parser.parse_args(argv[1:]))
    recorded_defaults(values)  # the data flags not given: the samples' run.json, as the scripts
    return json.loads(json.dumps(values)), parser


def default(parser, key):
    """``key``'s default as a results file records it (a FromRecord's: its fallback)."""
    value = parser.get_default(key)
    return json.loads(json.dumps(value.fallback if isinstance(value, FromRecord) else value))


def with_defaults(recorded, script):
    """The arguments ``recorded`` by a run of ``script`` (SCRIPT.py) with every flag the record
    lacks (added to the script since) at its default: how a record is compared, here and in the
    report."""
    parser = parser_of(script)
    return {**{key: default(parser, key) for key in vars(parser.parse_args([]))}, **recorded}


def other_settings(recorded, argv):
    """The settings in which the arguments ``recorded`` (a results file's "args") differ from
    those of the command ``argv``, as "name recorded -> wanted"."""
    wanted, _ = parse(argv)
    had = with_defaults(recorded, argv[0])
    return [f"{key} {had[key]!r} -> {value!r}" for key, value in wanted.items()
            if key not in NOT_DEFINING and had[key] != value]


def decide(results, checkpoint, argv, digests=None, kernels=None):
    """(status, why) of the job that writes ``results`` with the command ``argv``: "done",
    "resume" or "fresh" (see the module's docstring). ``digests`` caches the samples' digests."""
    try:
        with open(results) as f:
            run = json.load(f)
        recorded = run["args"]
    except FileNotFoundError:
        if os.path.exists(checkpoint):
            return "resume", "stopped before its first results"
        return "fresh", ""
    except (OSError, ValueError, TypeError, KeyError) as e:
        return "fresh", f"its results file cannot be read ({type(e).__name__})"
    differ = other_settings(recorded, argv)
    if differ:
        return "fresh", "made with other settings: " + ", ".join(differ)
    differ = other_kernels(run.get("kernels"), kernels or kernel_set())
    if differ:
        return "fresh", "made with other CPU kernels: " + ", ".join(differ)
    stale = stale_reason(os.path.dirname(results), run.get("sample_fingerprint"), digests)
    if stale:
        return "fresh", f"stale: {stale}"
    if "final" in run:
        return "done", ""
    if os.path.exists(checkpoint):
        return "resume", "unfinished"
    return "fresh", "unfinished, without a checkpoint"


def main():
    digests, kernels = {}, kernel_set()
    for line in sys.stdin:
        results, checkpoint, *argv = line.rstrip("\n").split("\t")
        status, why = decide(results, checkpoint, argv, digests, kernels)
        print(f"{status}\t{results}\t{why}")


if __name__ == "__main__":
    main()
