"""A small convolutional network for images shaped (channels, height, width)."""

from torch import nn


class CNN(nn.Sequential):
    """Conv blocks (Conv3x3 -> BatchNorm -> ReLU, doubling `channels` each block), a linear head.

    Each block but the last halves the spatial size, so 8x8 digits work with the default 2 blocks.
    The last block's features are averaged over a `pooled_size` x `pooled_size` grid before the
    head, which keeps roughly where in the image each feature is: a global average (1) loses
    that, and on the digits `experiment=example` reached 0.935 val_acc with it against 0.984.
    configs/model/cnn.yaml sets 2; the default 1 rebuilds checkpoints saved before it existed.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: int = 32,
        num_blocks: int = 2,
        dropout: float = 0.1,
        pooled_size: int = 1,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(
                f"model=cnn needs image inputs shaped (channels, height, width); this dataset "
                f"gives {tuple(input_shape)}. Use model=mlp, or a dataset with image inputs."
            )
        in_channels = input_shape[0]
        layers: list[nn.Module] = []
        for block in range(num_blocks):
            out_channels = channels * 2**block
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            if block < num_blocks - 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        layers += [
            nn.AdaptiveAvgPool2d(pooled_size),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels * pooled_size**2, num_outputs),
        ]
        super().__init__(*layers)
