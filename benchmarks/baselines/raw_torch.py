"""Baseline: the project's network trained by a hand-written PyTorch loop, no Lightning, no Ray.

Each epoch trains on the train split, shuffled and batched as the Lightning runs are
(`common.MemoryBatches`), with the task's loss, and evaluates the validation split; nothing is
logged or checkpointed. Torch threads: torch's default unless --threads. Prints `BENCH` timing
lines and the thread count.
"""

from .common import mark

mark("start")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from .common import build_network, load_data, parser, setup  # noqa: E402


def main() -> None:
    args = parser(__doc__).parse_args()
    cfg = setup(args)
    mark("imports_done")
    mark("torch_threads", torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    data = load_data(args.package, cfg)
    train, val = data.batches(cfg.data.batch_size, cfg.seed)
    net = build_network(args.package, cfg, data)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    mark("data_ready")
    step = 0
    accuracy = 0.0
    for epoch in range(cfg.trainer.max_epochs):
        net.train()
        for inputs, labels in train:
            optimizer.zero_grad(set_to_none=True)
            loss = data.task.loss(net(inputs), labels)
            loss.backward()
            optimizer.step()
            step += 1
        net.eval()
        correct = 0
        with torch.inference_mode():
            for inputs, labels in val:
                correct += (net(inputs).argmax(dim=1) == labels).sum().item()
        accuracy = correct / len(data.val[1])
        mark("epoch_end", epoch, step)
    mark("fit_done", accuracy)


if __name__ == "__main__":
    main()
