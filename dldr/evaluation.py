"""A run's test-set evaluations: the authors' (their ``Test:`` and `` * Prec@1`` lines) and the
same weights with BatchNorm statistics re-estimated on the training data."""
from .batchnorm import evaluate_reestimated
from .progress import evaluate, log, log_test


class Evaluator:
    """What every evaluation of a run needs, together: ``model`` (its parameters and BatchNorm
    statistics), ``eval_model`` (the module that runs the forward passes: the model, or its
    compiled form), the test loader, the training images for BatchNorm re-estimation
    (``bn_loader``), the autocast precision and the authors' ``--print-freq``."""

    def __init__(self, model, eval_model, test_loader, bn_loader, amp, print_freq):
        self.model, self.eval_model = model, eval_model
        self.test_loader, self.bn_loader = test_loader, bn_loader
        self.amp, self.print_freq = amp, print_freq

    def test(self, lines=True):
        """(test loss, accuracy); with ``lines`` the authors' Test lines and `` * Prec@1``."""
        if not lines:
            return evaluate(self.eval_model, self.test_loader, self.amp)
        loss, acc = evaluate(self.eval_model, self.test_loader, self.amp, self.print_freq)
        log_test(acc, loss)
        return loss, acc

    def reestimated(self, keep=False, train=False):
        """(test loss, accuracy) with BatchNorm statistics re-estimated (put back unless
        ``keep``), with ``train`` followed by the training set's, or None for a model without
        BatchNorm."""
        return evaluate_reestimated(self.model, self.eval_model, self.test_loader,
                                    self.bn_loader, self.amp, keep=keep, train=train)

    def after_epoch(self, reestimate):
        """The evaluation after an epoch: the authors' and, with ``reestimate``
        (--bn-reestimate), the re-estimated one on an ``=> `` line. Returns (test loss,
        accuracy, the results fields of the re-estimated one: {} without it or BatchNorm)."""
        loss, acc = self.test()
        bn = self.reestimated() if reestimate else None
        if bn is None:
            return loss, acc, {}
        log(f"=> BatchNorm statistics re-estimated: Prec@1 {bn[1]:.3f}\tLoss {bn[0]:.4f}")
        return loss, acc, {"test_loss_bn": bn[0], "test_acc_bn": bn[1]}

    def twice(self, label, keep=False, authors=None, train=False):
        """The weights judged twice, on one ``=> label:`` line: as the authors' scripts evaluate
        them (``authors``: that evaluation already made of these weights and statistics, the last
        epoch's, not made again), and with BatchNorm statistics re-estimated (kept in the model
        with ``keep``). With ``train``, also their loss and accuracy over the training set (its
        labels, no augmentation; BatchNorm re-estimated): one more pass, for the stall rule.
        Returns the results file's "start" or "final" object."""
        loss, acc = authors if authors is not None else self.test(lines=False)
        bn = self.reestimated(keep=keep, train=train)
        loss_bn, acc_bn = bn[:2] if bn is not None else (loss, acc)
        if train:  # the training set seen with the statistics of the test reading beside it
            train_loss, train_acc = (bn[2:] if bn is not None else
                                     evaluate(self.eval_model, self.bn_loader, self.amp))
        log(f"=> {label}: Prec@1 {acc:.3f}\tLoss {loss:.4f}; " + (
            f"BatchNorm statistics re-estimated on the training data: Prec@1 {acc_bn:.3f}\t"
            f"Loss {loss_bn:.4f}" if bn is not None else "no BatchNorm to re-estimate")
            + (f"; training set: Prec@1 {train_acc:.3f}\tLoss {train_loss:.4f}" if train else ""))
        result = {"test_acc": acc, "test_loss": loss, "test_acc_bn": acc_bn,
                  "test_loss_bn": loss_bn, "bn_reestimated": bn is not None}
        if train:
            result.update(train_loss=train_loss, train_acc=train_acc)
        return result
