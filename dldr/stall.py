"""The stall rule: whether a run trained, read from the training loss of its final weights against
the two losses that bound it, the best the (noisy) labels allow and a uniform guess's (docs/files.md)."""
import math

# Stalled: the final weights' training loss is at least this far from the best loss the labels
# allow towards a uniform guess's, ln(classes): within 10% of guessing
STALL_FRACTION = 0.9
# Inconclusive: with labels so noisy that the best loss is within this fraction of ln(classes)
# of a guess's, a model that learnt the clean labels and one that learnt nothing score alike
INCONCLUSIVE_FRACTION = 0.05


def best_loss(num_classes, corrupt):
    """The lowest expected cross-entropy on labels where a fraction ``corrupt`` was redrawn
    uniformly over all ``num_classes`` classes (--corrupt), for a model that knows each image's
    clean class but cannot know which labels were redrawn: the entropy of the label given the
    clean class, p = 1 - c + c/K on the clean class and c/K on each other. 0 without noise. (A
    model that memorises the redrawn labels goes lower on its training set: below it is trained.)"""
    c, k = float(corrupt), int(num_classes)
    if c <= 0:
        return 0.0
    right, other = 1.0 - c + c / k, c / k
    return -(right * math.log(right) + (k - 1) * other * math.log(other))


def stall_threshold(num_classes, corrupt):
    """(best loss, chance loss, threshold): the threshold is None when the rule is inconclusive."""
    best, chance = best_loss(num_classes, corrupt), math.log(num_classes)
    if chance - best < INCONCLUSIVE_FRACTION * chance:
        return best, chance, None
    return best, chance, best + STALL_FRACTION * (chance - best)


def stalled(train_loss, num_classes, corrupt):
    """True / False, or None (inconclusive: the labels are too noisy to tell) for a final
    training loss (None too when there is no loss)."""
    threshold = stall_threshold(num_classes, corrupt)[2]
    if train_loss is None or threshold is None:
        return None
    return train_loss >= threshold


RULE = (f"final_train_loss >= best_loss + {STALL_FRACTION:g} (ln(num_classes) - best_loss); "
        f"inconclusive when ln(num_classes) - best_loss < {INCONCLUSIVE_FRACTION:g} ln(num_classes)")


def stall_diagnostics(epochs, reach, num_classes, final_train_loss, corrupt=0.0):
    """The ``diagnostics`` of a subspace run's results from its epoch rows (``distance``, and
    ``first_projected_grad_norm`` in the row of its first step; older rows lack them: None), the
    trajectory's ``reach``, the number of classes, the final weights' training loss (one pass over
    the training set at the end) and the label noise, with the stall rule and its figures."""
    rows = [e for e in epochs if "train_loss" in e]  # the start's row has none
    first = next((e["first_projected_grad_norm"] for e in epochs
                  if "first_projected_grad_norm" in e), None)
    distances = [e["distance"] for e in epochs if "distance" in e]
    best, chance, threshold = stall_threshold(num_classes, corrupt)
    return {"first_projected_grad_norm": first,
            "max_distance": max(distances) if distances else None,
            "trajectory_reach": reach, "final_train_loss": final_train_loss,
            "last_epoch_train_loss": rows[-1]["train_loss"] if rows else None,
            "stalled": stalled(final_train_loss, num_classes, corrupt), "rule": RULE,
            "num_classes": num_classes, "corrupt": corrupt, "best_loss": best,
            "chance_loss": chance, "stall_threshold": threshold}


def stall_line(d):
    """The log's one line on a stalled or inconclusive run (``stall_diagnostics``), else None."""
    def number(x):
        return "n/a" if x is None else f"{x:.4g}"
    if d["stalled"] is None:
        return (f"=> stall rule inconclusive: with --corrupt {d['corrupt']:g} the best loss the "
                f"labels allow, {d['best_loss']:.4f}, is within {INCONCLUSIVE_FRACTION:g} "
                f"ln({d['num_classes']}) of a guess's {d['chance_loss']:.4f}; final training "
                f"loss {number(d['final_train_loss'])}")
    if not d["stalled"]:
        return None
    return (f"=> stalled: final training loss {d['final_train_loss']:.4f} >= "
            f"{d['best_loss']:.4f} + {STALL_FRACTION:g} ({d['chance_loss']:.4f} - "
            f"{d['best_loss']:.4f}) = {d['stall_threshold']:.4f} (best the labels allow + "
            f"{STALL_FRACTION:g} of the way to a guess, ln({d['num_classes']})); first projected "
            f"gradient norm {number(d['first_projected_grad_norm'])}, max distance from the start "
            f"{number(d['max_distance'])}, the trajectory's reach {number(d['trajectory_reach'])}")
