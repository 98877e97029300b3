"""ResNet in ResNet (Targ et al. 2016) in the CIFAR layout of the pytorch-cifar100 zoo.

Every layer carries two parallel states: a residual stream r, which has a shortcut, and a
transient stream t, which has none. Each generalized residual layer convolves both streams into
both streams (four 3x3 convolutions), sums, and applies BN-ReLU per stream.
"""
import torch
import torch.nn as nn

from . import register


def _conv3x3(in_channels, out_channels, stride):
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1)


class GeneralizedResidualLayer(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.r_to_r = _conv3x3(in_channels, out_channels, stride)
        self.t_to_r = _conv3x3(in_channels, out_channels, stride)
        self.r_to_t = _conv3x3(in_channels, out_channels, stride)
        self.t_to_t = _conv3x3(in_channels, out_channels, stride)
        self.bn_r = nn.BatchNorm2d(out_channels)
        self.bn_t = nn.BatchNorm2d(out_channels)
        # Projection shortcut (with bias, as in the reference zoo) where the shape changes.
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, streams):
        r, t = streams
        new_r = self.r_to_r(r) + self.t_to_r(t) + self.shortcut(r)
        new_t = self.r_to_t(r) + self.t_to_t(t)
        return torch.relu(self.bn_r(new_r)), torch.relu(self.bn_t(new_t))


class ResNetInResNet(nn.Module):
    """Eight blocks of two generalized layers; 48 channels per stream, doubled twice."""

    # (output channels per stream, stride of the block's first layer)
    BLOCKS = ((48, 1), (48, 1), (96, 2), (96, 1), (96, 1), (192, 2), (192, 1), (192, 1))
    LAYERS_PER_BLOCK = 2

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem_r = self._stem(48)
        self.stem_t = self._stem(48)
        layers, in_channels = [], 48
        for out_channels, stride in self.BLOCKS:
            for i in range(self.LAYERS_PER_BLOCK):
                layers.append(
                    GeneralizedResidualLayer(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        # The reference zoo maps the concatenated streams (8x8) to one 3x3 map per class with an
        # unpadded strided convolution (it reports losses going to NaN without it), then an MLP.
        self.head_conv = nn.Sequential(
            nn.Conv2d(2 * in_channels, num_classes, 3, 2),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Linear(num_classes * 3 * 3, 450),
            nn.ReLU(inplace=True),
            nn.Dropout(),  # torch RNG; identity in eval mode
            nn.Linear(450, num_classes),
        )
        for m in self.modules():
            # Kaiming-normal weights and a small positive bias, as in the reference zoo
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.constant_(m.bias, 0.01)

    @staticmethod
    def _stem(out_channels):
        return nn.Sequential(
            _conv3x3(3, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x):
        r, t = self.layers((self.stem_r(x), self.stem_t(x)))
        out = self.head_conv(torch.cat((r, t), 1))
        return self.classifier(out.flatten(1))


@register
def rir(num_classes=10):
    return ResNetInResNet(num_classes)
