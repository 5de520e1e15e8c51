"""User models, as source text a test writes into a module of its own and trains by name."""

# Reshapes with the batch size read at run time: fine for PyTorch and onnxruntime, not MXNet's importer.
VIEW_NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Reshapes with the batch size read at run time: fine for PyTorch and onnxruntime, not MXNet."""

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x.view(x.shape[0], 1, 8, 8)))
        return self.fc(x.flatten(1))
'''

# Flattens a conv's output by the batch size of another tensor (the input), with a -1 besides: two
# sizes left to run time, which no constant shape can say to MXNet's importer.
OTHER_BATCH_NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Flattens by the input's batch size rather than the flattened tensor's own: not for MXNet."""

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(-1, 1, 8, 8)))
        return self.fc(h.view(x.shape[0], -1))
'''
