"""The small convolutional network of the DANN paper's digit experiments."""
from __future__ import annotations

from torch import nn

from dabench.errors import DabenchError
from dabench.nets import Backbone, load_weights
from dabench.registry import plugin


@plugin("digit-cnn", task="classification", regime="digits", description="DANN paper digit CNN: conv5x5-32, pool, conv5x5-48, pool, fc-100 (fast on CPU)")
def digit_cnn(arg: str | None = None, *, in_channels: int = 3, image_size: int = 28, pretrained: str | None = None,
              num_classes: int | None = None) -> Backbone:
    """Ganin et al. (JMLR 2016), MNIST architecture: conv 5x5x32 -> maxpool 2 -> conv 5x5x48 ->
    maxpool 2, then the first fully connected layer (100 units) as the feature vector. The rest of
    the paper's label head (fc-100 -> fc-10) is the algorithm's head; the paper's domain head
    (fc-100 -> fc-1) reads the flattened convolutional features (``lower_features`` = 768 at 28x28)."""
    if arg:
        raise DabenchError(f"digit-cnn takes no argument, got 'digit-cnn:{arg}'. Write just 'digit-cnn'.")
    lower = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise DabenchError(f"digit-cnn needs images of at least 16x16 pixels, got {image_size}.")
    upper = nn.Sequential(nn.Flatten(), nn.Linear(48 * side * side, 100), nn.ReLU(inplace=True))
    net = Backbone(lower, upper, 100, lower_features=48 * side * side)
    if pretrained:
        load_weights(net, pretrained)
    return net


@plugin("domainbed-cnn", task="classification", regime="digits",
        description="DomainBed's MNIST CNN: 4 conv3x3 (64, 128 stride 2, 128, 128) each ReLU + GroupNorm, mean-pool to 128")
def domainbed_cnn(arg: str | None = None, *, in_channels: int = 3, image_size: int = 28, pretrained: str | None = None,
                  num_classes: int | None = None) -> Backbone:
    """DomainBed's featurizer for its MNIST data sets (domainbed/networks.py, ``MNIST_CNN``): four 3x3
    convolutions (64; 128 with stride 2; 128; 128), each followed by ReLU and GroupNorm with 8
    groups, then the mean over the map: a 128-d feature vector. Its GroupNorm keeps the features
    of every image spread out, where the DANN digit CNN's fc-100 ReLU can switch them all off at
    once; about 18 times the DANN CNN's multiply-adds per 28x28 image (74M against 4M)."""
    if arg:
        raise DabenchError(f"domainbed-cnn takes no argument, got 'domainbed-cnn:{arg}'. Write just 'domainbed-cnn'.")
    lower = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, 1, padding=1), nn.ReLU(), nn.GroupNorm(8, 64),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.GroupNorm(8, 128),
        nn.Conv2d(128, 128, 3, 1, padding=1), nn.ReLU(), nn.GroupNorm(8, 128),
        nn.Conv2d(128, 128, 3, 1, padding=1), nn.ReLU(), nn.GroupNorm(8, 128),
    )
    net = Backbone(lower, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 128)
    if pretrained:
        load_weights(net, pretrained)
    return net
