"""VGG-11/13/16/19 with BatchNorm (Simonyan & Zisserman 2015), pytorch-cifar100 layout.

3x3 convolutions (with bias, as in the reference) each followed by BN and ReLU; five 2x2 max pools
reduce a 32x32 input to 1x1x512, so the classifier is 512 -> 4096 -> 4096 -> classes, with dropout
after the first hidden layer only, as in the reference.
"""
import torch.nn as nn

from . import register

# conv widths per stage; a max pool closes each stage (configurations A, B, D, E of the paper)
CONFIGS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    def __init__(self, stages, num_classes=10):
        super().__init__()
        layers, in_channels = [], 3
        for widths in stages:
            for out_channels in widths:
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                           nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register
def vgg11(num_classes=10):
    return VGG(CONFIGS[11], num_classes)


@register
def vgg13(num_classes=10):
    return VGG(CONFIGS[13], num_classes)


@register
def vgg16(num_classes=10):
    return VGG(CONFIGS[16], num_classes)


@register
def vgg19(num_classes=10):
    return VGG(CONFIGS[19], num_classes)
