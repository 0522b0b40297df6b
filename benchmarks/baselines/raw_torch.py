"""Baseline: the project's network trained by a hand-written PyTorch loop, no Lightning, no Ray.

Each epoch trains on the shuffled train split and evaluates the validation split, like the
Lightning runs; nothing is logged or checkpointed. Prints `BENCH` timing lines.
"""

from .common import mark

mark("start")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from .common import build_network, load_data, parser, setup  # noqa: E402


def main() -> None:
    args = parser(__doc__).parse_args()
    cfg = setup(args)
    mark("imports_done")
    torch.manual_seed(cfg.seed)
    data = load_data(args.package, cfg)
    batch_size = cfg.data.batch_size
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True)
    val = DataLoader(data.val, batch_size=batch_size)
    net = build_network(cfg, data)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    mark("data_ready")
    step = 0
    accuracy = 0.0
    for epoch in range(cfg.trainer.max_epochs):
        net.train()
        for inputs, labels in train:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(inputs), labels)
            loss.backward()
            optimizer.step()
            step += 1
        net.eval()
        correct = 0
        with torch.inference_mode():
            for inputs, labels in val:
                correct += (net(inputs).argmax(dim=1) == labels).sum().item()
        accuracy = correct / len(data.val)
        mark("epoch_end", epoch, step)
    mark("fit_done", accuracy)


if __name__ == "__main__":
    main()
