"""A batch-1 MLP for 28x28 images: a weight-bound model, where every weight is read once per image, so
that 4- and 2-bit weights move 2x and 4x fewer bytes than 8-bit ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """``Flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3 -> ReLU -> head``: three hidden linear layers of
    ``hidden`` units and a linear classifier ``head``. The defaults are the embedded ``mlp_fmnist``:
    784 -> 1536 -> 1536 -> 1536 -> 10, 5.94 M parameters and multiply-accumulates per image.

    ``dropout`` (after each hidden ReLU) applies in training mode only: an eval-mode forward pass, the one
    that is exported, holds no dropout op, and the state dict is the same at any value.
    """

    def __init__(self, in_features: int = 784, hidden: int = 1536, num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for fc in (self.fc1, self.fc2, self.fc3):
            x = F.relu(fc(x))
            if self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
        return self.head(x)

