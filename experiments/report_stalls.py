"""The report's section on the runs that did not train: their diagnostics grouped by where they
start, the facts those figures show and the causes they point to."""
from report_runs import fmt, fmt_g

# A stall from the samples' mean is called a runaway when the run went more than this many times
# the samples' spread (its trajectory reach) from its start
RUNAWAY_REACHES = 10


def why_runs_stall(w, judged, is_stalled, chance_loss, num_classes, sub, lr_line):
    """Write the section (``w``: the report's line writer) from the runs ``judged`` (noise, seed,
    name, results), the stall rule ``is_stalled``, a guess's loss and the classes, the subspace
    runs' arguments ``sub`` and the sensitivity runs' line ``lr_line``."""
    w("## Why some runs do not train\n")
    w("Every figure here is read from the subspace runs' `diagnostics` (the random-basis control "
      "apart), grouped by where a run starts and whether it stalled; median (lowest–highest).\n")
    subspace = [run for _, _, _, run in judged if run.get("method") not in ("sgd", "swa")]
    undiagnosed = [run for run in subspace if not run.get("diagnostics")]
    subspace = [run for run in subspace if run.get("diagnostics")]

    def start_of(run):
        """Where a subspace run starts: a sample's number, or "mean" (TWA)."""
        where = run.get("train_start", run["args"].get("train_start"))
        return run["args"].get("params_start") if where is None else where

    def where_text(where):
        if where == "mean":
            return "the samples' mean (TWA)"
        return "sample 0, the random initialisation" if where == 0 else f"sample {where}"
    groups = {}  # (start, stalled): runs
    for run in subspace:
        groups.setdefault((start_of(run), is_stalled(run)), []).append(run)
    # the samples in order, then the mean; the stalled first
    order = sorted(groups, key=lambda g: (isinstance(g[0], str), 0 if isinstance(g[0], str) else g[0],
                                          not g[1]))

    def figures(runs, field):
        return [r["diagnostics"][field] for r in runs if r["diagnostics"].get(field) is not None]

    def reach_ratio(runs):
        return [r["diagnostics"]["max_distance"] / r["diagnostics"]["trajectory_reach"] for r in runs
                if r["diagnostics"].get("max_distance") is not None
                and r["diagnostics"].get("trajectory_reach")]
    w("| runs from | stalled | runs | first projected gradient norm | max distance | trajectory "
      "reach | max distance / reach | final training loss |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    for where, stuck in order:
        runs = groups[where, stuck]
        w(f"| {where_text(where)} | {'yes' if stuck else 'no'} | {len(runs)} | "
          f"{fmt_g(figures(runs, 'first_projected_grad_norm'))} | "
          f"{fmt_g(figures(runs, 'max_distance'))} | {fmt_g(figures(runs, 'trajectory_reach'))} | "
          f"{fmt_g(reach_ratio(runs))} | {fmt(figures(runs, 'final_train_loss'), 2)} |")
    w("")
    stalled_runs = [r for (_, stuck), runs in groups.items() if stuck for r in runs]
    from_zero = [r for (where, _), runs in groups.items() if where == 0 for r in runs]
    trained_zero = groups.get((0, False), [])
    later = [r for (where, _), runs in groups.items() if where != 0 for r in runs]
    facts = []
    if stalled_runs:
        zero_stalls = sum(start_of(r) == 0 for r in stalled_runs)
        facts.append(f"{zero_stalls} of the {len(stalled_runs)} stalled subspace runs start from "
                     f"sample 0, the random initialisation")
    if from_zero and later:
        facts.append(f"the first projected gradient norm from sample 0 is "
                     f"{fmt_g(figures(from_zero, 'first_projected_grad_norm'))} against "
                     f"{fmt_g(figures(later, 'first_projected_grad_norm'))} from the later starts")
    if stalled_runs:
        facts.append(f"the stalled runs go as far as {fmt_g(figures(stalled_runs, 'max_distance'))}"
                     f" from their start against a trajectory reach of "
                     f"{fmt_g(figures(stalled_runs, 'trajectory_reach'))}, that is "
                     f"{fmt_g(reach_ratio(stalled_runs))} times it"
                     + (f", where the trained ones from sample 0 go "
                        f"{fmt_g(reach_ratio(trained_zero))} times theirs" if trained_zero else ""))
        losses = figures(stalled_runs, 'final_train_loss')
        above = sum(loss > chance_loss for loss in losses)
        facts.append(f"they end with a final training loss of {fmt(losses, 2)}, against ln "
                     f"{num_classes} = {chance_loss:.2f} for a uniform guess"
                     + (f" ({above} of {len(losses)} above it: worse than a guess, a divergence "
                        "rather than a plateau)" if above else " (a plateau near a guess)"))
    else:
        facts.append("no subspace run stalled")
    w("In these runs " + "; ".join(facts) + ".\n")
    if undiagnosed:  # reused runs made before the scripts recorded diagnostics
        w(f"{len(undiagnosed)} of the {len(undiagnosed) + len(subspace)} subspace runs carry no "
          "`diagnostics` (made before the scripts recorded them, and reused since: their settings "
          "are the same): they are judged by their last epoch's training loss and left out of "
          "these figures. Delete their results files (or run with `FRESH=1`) to make them again "
          "with their diagnostics.\n")
    w(lr_line)
    momentum = sub["psgd"].get("momentum")
    if stalled_runs:  # measured once by hand on runs of earlier reports, not on these
        w("Not rounding, as far as measured: two stalled runs of earlier reports, made again in "
          "float64 (`--dtype float64`), stalled the same way (figures in docs/beside-dldr.md), "
          "and the project's P-SGD step equals the authors' to 2.2e-16 a step in float64 "
          "(tests/test_psgd_reference.py); these runs were not made again.\n")
    causes = []
    if any(start_of(r) == 0 for r in stalled_runs):
        causes.append(
            "from the random initialisation a stall is the method at this small budget (P-SGD: "
            f"lr {sub['psgd']['lr']:g}" + (f", momentum {momentum:g}" if momentum is not None
                                           else "")
            + f", {sub['psgd']['epochs']} epochs; P-BFGS: {sub['pbfgs']['epochs']} epochs)")
    # A runaway: from the samples' mean, carried many times the samples' spread away (what the
    # sentence says, checked on each run rather than assumed of every stall from the mean)
    runaway = [r for r in stalled_runs
               if start_of(r) == "mean" and any(x > RUNAWAY_REACHES for x in reach_ratio([r]))]
    if runaway:
        lrs = " and ".join(f"{lr:g}" for lr in sorted({r["args"]["lr"] for r in runaway}))
        causes.append(
            "from the mean of samples that barely differ (trajectory reach "
            f"{fmt_g(figures(runaway, 'trajectory_reach'))}) TWA's lr {lrs} runs away: a few "
            "batches' gradients on the span, far above the others, carry the weights "
            f"{fmt_g(reach_ratio(runaway))} times the samples' spread, where the gradients are "
            "larger still (measured step by step on such a run of an earlier report: "
            "docs/beside-dldr.md)")
    if any(start_of(r) != 0 and r not in runaway for r in stalled_runs):
        causes.append("the other runs that stalled are listed above with their figures")
    if causes:
        w("Why: " + "; ".join(causes) + ".\n")
