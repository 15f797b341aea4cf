"""CancerNet in PyTorch, layer for layer the model `models` defines (the tutorial's Keras model):
[SeparableConv2D ReLU BatchNorm] x depth, MaxPool 2, Dropout per block; Dense ReLU BatchNorm
Dropout Dense. Used by the peer benchmarks (bench/peers.sh: bench/train_pytorch.py,
bench/compare_graphs.py) and, packed by bench/gpu-pack.sh, PyTorch's run on a GPU.
"""
import torch
from torch import nn


class SepConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def bn(c, dims):
    # Keras momentum 0.99 (old weight) is PyTorch momentum 0.01 (new weight); Keras eps 1e-3.
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(c, momentum=0.01, eps=1e-3)


class CancerNet(nn.Module):
    def __init__(self, widths=(32, 64, 128), depths=(1, 2, 3), dense=256, classes=2, size=48):
        super().__init__()
        layers, cin = [], 3
        for width, depth in zip(widths, depths):
            for _ in range(depth):
                layers += [SepConv(cin, width), nn.ReLU(), bn(width, 2)]
                cin = width
            layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
            size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * size * size, dense),
            nn.ReLU(),
            bn(dense, 1),
            nn.Dropout(0.5),
            nn.Linear(dense, classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class WithSoftmax(nn.Module):
    """The exported graph's output: probabilities, as `exporter` writes them."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        return torch.softmax(self.net(image), dim=1)


if __name__ == "__main__":
    net = CancerNet()
    print(sum(p.numel() for p in net.parameters()), "trainable parameters")
