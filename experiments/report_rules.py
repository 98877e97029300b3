"""The report's verdicts: each comparison of a claim judged seed by seed, each seed's value against
the same seed's reference (or a fixed bar), with margins in points, on both readings of the final
accuracy; a claim over several comparisons from theirs."""
import collections
import math
import statistics

from report_runs import SENSITIVITY_LR

EVALUATIONS = (("test_acc", "as the authors evaluate"), ("test_acc_bn", "BatchNorm re-estimated"))
# A comparison holds in at least this share of the seeds (and on the median difference); it does
# not hold in at most FAILS_SHARE of them (or when its opposite holds); between: inconclusive
HOLDS_SHARE, FAILS_SHARE = 0.8, 0.2
HOLDS, NOT, INCONCLUSIVE, UNTESTABLE = "holds", "does not hold", "inconclusive", "cannot be tested"
CEILING = 100.0  # accuracy in %

# What a comparison asks of a seed's difference d = ours - theirs, in points, and its opposite:
# "above" by at least +1 point (below by at least 1 is its opposite); "within" 2 points (at least
# -2); "at least" a fixed bar; "below" a fixed bar, strictly
KINDS = {
    "above": (lambda d: d >= 1.0, lambda d: d <= -1.0, "at least +1 point"),
    "within": (lambda d: d >= -2.0, lambda d: d < -2.0, "at least -2 points"),
    "at least": (lambda d: d >= 0.0, lambda d: d < 0.0, "at least 0"),
    "below": (lambda d: d < 0.0, lambda d: d >= 0.0, "below 0"),
}

Comparison = collections.namedtuple(
    "Comparison", "kind count ties n median low high p status")


def sign_test_p(count, n):
    """One-sided sign test: the chance of ``count`` or more passes in ``n`` seeds if each seed
    passed with probability 1/2 (5 of 5: 0.031; 4 of 5: 0.19; 3 of 5: 0.5)."""
    return sum(math.comb(n, i) for i in range(count, n + 1)) / 2 ** n


def compare(ours, theirs, kind):
    """One comparison: ``ours`` and ``theirs`` per-seed values in the same seed order
    (``theirs`` a number for a fixed bar), ``kind`` one of KINDS. Holds when it passes in at
    least ceil(HOLDS_SHARE N) of the N seeds and its median difference passes; does not hold
    when it passes in at most floor(FAILS_SHARE N) seeds or its opposite holds by the same rule;
    otherwise inconclusive. An "above" comparison cannot be tested where both sides' medians sit
    within its margin of the ceiling (100%): there is no room to be 1 point above."""
    passes, opposite, _ = KINDS[kind]
    bars = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs] * len(ours)
    diffs = [a - b for a, b in zip(ours, bars)]
    n, count = len(diffs), sum(bool(passes(d)) for d in diffs)
    against = sum(bool(opposite(d)) for d in diffs)
    mid = statistics.median(diffs)
    enough = math.ceil(HOLDS_SHARE * n)
    if kind == "above" and min(statistics.median(ours), statistics.median(bars)) > CEILING - 1.0:
        status = UNTESTABLE
    elif count >= enough and passes(mid):
        status = HOLDS
    elif count <= math.floor(FAILS_SHARE * n) or (against >= enough and opposite(mid)):
        status = NOT
    else:
        status = INCONCLUSIVE
    return Comparison(kind, count, sum(d == 0 for d in diffs), n, mid, min(diffs), max(diffs),
                      sign_test_p(count, n), status)


def said(c, what):
    """'within 2 points: 7 of 10 seeds (1 tie), median difference -0.8 (-3.1 to +0.6) points,
    sign-test p = 0.17: inconclusive'"""
    ties = f" ({c.ties} tie{'s' if c.ties != 1 else ''})" if c.ties else ""

    def points(x):  # (rounded first: a difference of -1e-12 is not "-0.0")
        return f"{round(x, 1) + 0.0:+.1f}"
    return (f"{what}: {c.count} of {c.n} seeds{ties}, median difference {points(c.median)} "
            f"({points(c.low)} to {points(c.high)}) points, sign-test p = {c.p:.2g}: {c.status}")


def verdict(comparisons):
    """A claim's verdict from its comparisons: it holds only if every testable one holds and does
    not hold if any does not; those that cannot be tested are left out (all of them: the claim
    cannot be tested); otherwise inconclusive."""
    testable = [c for c in comparisons if c.status != UNTESTABLE]
    if not testable:
        return "Cannot be tested"
    if any(c.status == NOT for c in testable):
        return "Does not hold"
    if all(c.status == HOLDS for c in testable):
        return "Holds" + (" where it can be tested" if len(testable) < len(comparisons) else "")
    return "Inconclusive"


def rule_text(n_seeds, n_test, n_sweep=None):
    """The rule as the report states it, with the margins in test images; ``n_sweep``: the seeds
    of the size sweep's other sizes, where fewer."""
    image = 100.0 / n_test
    counts = [(n_seeds, "")] + ([(n_sweep, " for the sweep's other sizes")]
                                if n_sweep and n_sweep != n_seeds else [])
    return (f"Each claim is made of comparisons (of a method, noise level or size, as its rule "
            f"says), each judged seed by seed: each seed's run against the same seed's reference "
            f"(its SGD run, its restart sample, its SWA) or a fixed bar. \"Above\" means at least "
            f"+1 point ({1 / image:.1f} test images of {n_test}), \"within 2 points\" at least -2 "
            f"points ({2 / image:.1f} images); a tie is counted as a tie. A comparison **holds** "
            f"when it passes in at least ⌈{HOLDS_SHARE:g} N⌉ of the N seeds ("
            + "; ".join(f"{math.ceil(HOLDS_SHARE * n)} of {n}{what}" for n, what in counts)
            + f") and its median difference passes; it **does not hold** when it passes in at "
            f"most ⌊{FAILS_SHARE:g} N⌋ ("
            + "; ".join(f"{math.floor(FAILS_SHARE * n)}{what}" for n, what in counts)
            + f") or its opposite holds; otherwise it is "
            f"**inconclusive**; an \"above\" comparison where both sides' medians are within 1 point "
            f"of 100% **cannot be tested**. Each comparison gives its count, the median of the "
            f"per-seed differences with their range, and the one-sided sign-test p (the chance of "
            f"that many passes if each seed passed with probability 1/2). A claim over several "
            f"comparisons holds only if every one that can be tested holds, and does not hold if "
            f"any does not. Every verdict is computed on both readings of the final accuracy, from "
            f"the paper's settings only; the sensitivity runs (lr {SENSITIVITY_LR}) are an aside "
            f"under the claims they bear on.\n")


# Each reading's heading in a claim and its short name in an aside
DLDR_READINGS = (("As the authors evaluate", "as the authors evaluate"),
                 ("BatchNorm statistics re-estimated", "BatchNorm re-estimated"))
# nblt/TWA's train_twa.py re-estimates BatchNorm (bn_update) before it evaluates TWA and SWA
TWA_READINGS = (("As DLDR's scripts read it (running statistics, not TWA's authors' reading)",
                 "on the running statistics"),
                ("BatchNorm statistics re-estimated (TWA's authors' evaluation of TWA and SWA)",
                 "BatchNorm re-estimated (TWA's authors' reading)"))


def judged_twice(name, rule, measure, readings=DLDR_READINGS):
    """A claim judged on both evaluations: ``measure(key)`` -> (text, verdict) per evaluation,
    each line headed by whose reading it is (``readings``)."""
    (t1, v1), (t2, v2) = (measure(key) for key, _ in EVALUATIONS)
    same = "the same verdict on both" if v1 == v2 else "the verdicts **differ** between the readings"
    return (f"**{name}** Rule: {rule}\n"
            f"   - {readings[0][0]}: {t1} **{v1}.**\n"
            f"   - {readings[1][0]}: {t2} **{v2}.**\n"
            f"   - {same[0].upper() + same[1:]}.")


def aside(intro, measure, measure_there, readings=DLDR_READINGS):
    """An aside under a claim: its verdicts with another run in place of the headline one
    (``measure_there``), and whether they differ from the headline ones (``measure``)."""
    faithful = [measure(key)[1] for key, _ in EVALUATIONS]
    there = [measure_there(key)[1] for key, _ in EVALUATIONS]
    short = [r[1] for r in readings]
    differs = [f"{how}: {a} -> {b}" for how, a, b in zip(short, faithful, there) if a != b]
    return (f"   - {intro}: **{there[0]}** {short[0]}, **{there[1]}** {short[1]}; "
            + (f"the verdict would differ ({'; '.join(differs)})." if differs
               else "the same verdicts."))


def at_sensitivity_lr(measure, measure_there, instead, readings=DLDR_READINGS):
    """The aside of a claim that a sensitivity run (lr SENSITIVITY_LR) bears on."""
    return aside(f"At lr {SENSITIVITY_LR} (not the paper's setting: {instead} in its place)",
                 measure, measure_there, readings)
