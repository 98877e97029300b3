"""TWA (Li et al., "Trainable Weight Averaging", ICLR 2023; nblt/TWA): P-SGD in the span of the
raw samples, from their mean.

train_psgd.py with TWA's recipe as its defaults: the basis is the span of samples
params_start..params_end-1 (orthonormalised by QR, one direction per sample), training starts
from their mean with BatchNorm statistics re-estimated, SGD with lr 2, momentum 0.9 and weight
decay 1e-5 (the weights stay in the span), the LR x0.1 at 50% and 75% of the epochs, and the final
model evaluated and saved with BatchNorm statistics re-estimated. Writes results_twa.json, TWA.pt
and checkpoint_twa.pt; every flag of train_psgd.py applies.

    python -u train_twa.py --epochs 10 --datasets CIFAR10 --params_start 0 --params_end 101 \\
        --batch-size 128 --arch resnet20 --save-dir save_resnet20
"""
import train_psgd
import utils


def build_parser():
    return train_psgd.build_parser(
        description="TWA: P-SGD in the span of the trajectory's samples, from their mean",
        epochs=10, lr=2.0, milestones=None, basis="span", train_start="mean", weight_decay=1e-5,
        bn_reestimate=True)


def main(argv=None):
    return train_psgd.main(argv, build_parser(), method="twa", title="TWA")


if __name__ == "__main__":
    utils.run_main(main)
