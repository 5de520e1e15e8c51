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
