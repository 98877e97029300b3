"""The report's verdicts: each comparison of a claim judged on the medians over the seeds and on
the count of seeds where it holds, on both readings of the final accuracy."""
import collections
import math

from report_runs import SENSITIVITY_LR, median

EVALUATIONS = (("test_acc", "as the authors evaluate"), ("test_acc_bn", "BatchNorm re-estimated"))
# The verdict rule: a comparison holds on the medians and in at least this share of the seeds
HOLDS_SHARE = 0.8
HOLDS, PARTLY, NOT = "holds", "partly", "does not hold"

Check = collections.namedtuple("Check", "median_ok count n status")


def check(ours, theirs, holds):
    """One comparison of a claim, judged on the medians over the seeds and seed by seed:
    ``ours`` and ``theirs`` are per-seed values in the same seed order (``theirs`` a number for
    a fixed bar), ``holds(a, b)`` the condition. The rule (stated in the report): holds on the
    medians and in at least ceil(HOLDS_SHARE N) of the N seeds: holds; on the medians or in at
    least half the seeds: partly; otherwise not."""
    bars = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs] * len(ours)
    median_ok = bool(holds(median(ours), median(bars)))
    count = sum(bool(holds(a, b)) for a, b in zip(ours, bars))
    n = len(ours)
    if median_ok and count >= math.ceil(HOLDS_SHARE * n):
        status = HOLDS
    elif median_ok or 2 * count >= n:
        status = PARTLY
    else:
        status = NOT
    return Check(median_ok, count, n, status)


def said(c, what):
    """'within 2 points: yes on the medians, in 2 of 5 seeds (partly)'"""
    return (f"{what}: {'yes' if c.median_ok else 'no'} on the medians, in {c.count} of {c.n} "
            f"seeds ({c.status})")


def verdict(checks):
    """A claim's verdict from its comparisons: all hold, some hold at least partly, or none."""
    if all(c.status == HOLDS for c in checks):
        return "Holds"
    return "Holds partly" if any(c.status != NOT for c in checks) else "Does not hold"


def judged_twice(name, rule, measure):
    """A claim judged on both evaluations: ``measure(key)`` -> (text, verdict) per evaluation."""
    (t1, v1), (t2, v2) = (measure(key) for key, _ in EVALUATIONS)
    same = "the same verdict on both" if v1 == v2 else (
        "**the verdicts differ**: the authors' evaluation reads BatchNorm statistics that lag "
        "behind the last steps, the re-estimated one reads the weights")
    return (f"**{name}** Rule: {rule}\n"
            f"   - As the authors evaluate: {t1} **{v1}.**\n"
            f"   - BatchNorm statistics re-estimated: {t2} **{v2}.**\n"
            f"   - {same[0].upper() + same[1:]}.")


def at_sensitivity_lr(measure, measure_there, instead):
    """The aside of a claim that a sensitivity run bears on: its verdicts with ``instead`` (the
    run at lr SENSITIVITY_LR) in place of the paper's setting (``measure_there``), and whether
    they differ from the headline ones (``measure``)."""
    faithful = [measure(key)[1] for key, _ in EVALUATIONS]
    there = [measure_there(key)[1] for key, _ in EVALUATIONS]
    differs = [f"{how}: {a} -> {b}" for (_, how), a, b in zip(EVALUATIONS, faithful, there)
               if a != b]
    return (f"   - At lr {SENSITIVITY_LR} (not the paper's setting: {instead} in its place): "
            f"**{there[0]}** as the authors evaluate, **{there[1]}** BatchNorm re-estimated; "
            + (f"the verdict would differ ({'; '.join(differs)})." if differs else
               "the verdicts would not differ."))
