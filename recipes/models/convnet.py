"""A small convolutional network without make_batch: the recipe gives its `input_shape`.

Without make_batch gradcheck feeds random inputs of the recipe's per-sample shape (here 3x16x16)
and, with no target, uses the mean of the squared outputs as the loss.
"""

from torch import nn


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x).mean(dim=(2, 3)))
