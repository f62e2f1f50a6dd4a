"""Training throughput: our loop (`verifier.training.train`) against a plain fp32 eager PyTorch loop,
measured in the same run on the same device, plus the wall time of one IMP round.

    python benchmarks/train_speed.py                  # CPU: small synthetic set, runs anywhere
    python benchmarks/train_speed.py --size 50000 --batch 128 --epochs 2   # GPU-sized run

Data: CIFAR-shaped synthetic images (`verifier.data.load_synthetic`), resident on the device.
Prints a table: images/s of each loop and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.data import load_synthetic  # noqa: E402
from verifier.masks import magnitude_mask  # noqa: E402
from verifier.models import build_model, prunable_parameters  # noqa: E402
from verifier.training import TrainConfig, resolve_device, train  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int) -> None:
    """The baseline: fp32, eager, SGD with momentum, no mask, no extras."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), device=x.device)
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_synthetic(shape=(3, 32, 32), classes=10, size=args.size, test_size=256, seed=0)
    x, y = data.x_train.to(device), data.y_train.to(device)
    rows = []

    torch.manual_seed(0)
    model = build_model(args.arch, data.input_shape, data.num_classes).to(device)
    plain_loop(model, x[: args.batch * 2], y[: args.batch * 2], epochs=1, batch=args.batch)  # warm-up
    _sync(device)
    start = time.perf_counter()
    plain_loop(model, x, y, epochs=args.epochs, batch=args.batch)
    _sync(device)
    plain = args.epochs * len(x) / (time.perf_counter() - start)
    rows.append(("plain fp32 eager loop", plain))

    torch.manual_seed(0)
    model = build_model(args.arch, data.input_shape, data.num_classes)
    weights = dict(model.named_parameters())
    mask = magnitude_mask(weights, dict.fromkeys(prunable_parameters(args.arch, model), 0.2))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, device=args.device)
    train(model, x[: args.batch * 2], y[: args.batch * 2], config=config, mask=mask)  # warm-up
    _sync(device)
    start = time.perf_counter()
    train(model, x, y, config=config, mask=mask)
    _sync(device)
    ours = args.epochs * len(x) / (time.perf_counter() - start)
    rows.append(("verifier.training.train (mask re-applied each step)", ours))

    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {args.arch}, {args.size} images, batch {args.batch}, "
          f"{args.epochs} epoch(s)")
    print(f"{'loop':<55} {'images/s':>10} {'vs plain':>9}")
    for name, rate in rows:
        print(f"{name:<55} {rate:>10.0f} {rate / plain:>8.2f}x")


if __name__ == "__main__":
    main()
