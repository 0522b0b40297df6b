"""A multi-layer perceptron over flattened inputs."""

from math import prod

from torch import nn


class MLP(nn.Sequential):
    """`num_layers` hidden layers of width `hidden_dim`, each Linear -> ReLU -> Dropout."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden_dim: int = 128,
        num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
