"""A small classifier trained on synthetic data drawn from the run's seed.

Runs the same on one process (`pystematic run train`) and on several ranks
(`pystematic distributed train --nproc 2`): the context hides the difference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import pystematic as ps


def make_data(seed: int, n: int, features: int, classes: int) -> TensorDataset:
    """Gaussian blobs, one per class; the same seed gives the same data on every rank."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    x = centers[labels] + torch.randn(n, features, generator=g)
    return TensorDataset(x, labels)


class Augmented(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Adds noise in the DataLoader workers, so worker seeding matters."""

    def __init__(self, base: TensorDataset, noise: float) -> None:
        self.base, self.noise = base, noise

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return x + self.noise * torch.randn_like(x), y


@ps.parameter("epochs", type=int, default=5, help="Passes over the data.")
@ps.parameter("lr", type=float, default=0.05, help="Learning rate.")
@ps.parameter("optimizer", type=str, default="sgd", choices=["sgd", "adam"])
@ps.parameter("batch_size", type=int, default=16, help="Samples per step and rank.")
@ps.parameter("hidden", type=int, default=32, help="Hidden units.")
@ps.parameter("dropout", type=float, default=0.2, help="Dropout probability.")
@ps.parameter("augment", type=bool, default=True, help="Add noise to the inputs.")
@ps.parameter("workers", type=int, default=2, help="DataLoader worker processes.")
@ps.parameter("samples", type=int, default=512, help="Size of the synthetic data set.")
@ps.experiment
def train(params: ps.Params, context: ps.Context) -> float:
    """Train a small classifier on synthetic blobs."""
    data = make_data(context.new_seed("data"), params.samples, features=8, classes=4)
    dataset = Augmented(data, 0.3) if params.augment else data
    model = nn.Sequential(
        nn.Linear(8, params.hidden),
        nn.ReLU(),
        nn.Dropout(params.dropout),
        nn.Linear(params.hidden, 4),
    )
    model = context.ddp(model)
    opt_class = torch.optim.SGD if params.optimizer == "sgd" else torch.optim.Adam
    optimizer = opt_class(model.parameters(), lr=params.lr)
    # Split among the ranks in a distributed run; a new seeded permutation every epoch.
    loader = context.dataloader(
        dataset, batch_size=params.batch_size, shuffle=True, num_workers=params.workers
    )
    loss_fn = nn.CrossEntropyLoss()
    accuracy = 0.0
    for epoch in context.loop(params.epochs, desc="epoch"):
        model.train()
        correct = total = 0
        for x, y in loader:
            x, y = context.to_device(x, y)
            optimizer.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
            context.recorder.scalar("train/loss", loss.item())
            context.recorder.step()
        accuracy = correct / total
        context.recorder.scalar("train/accuracy", accuracy, reduce="mean")
        context.recorder.scalar("epoch", epoch)
        context.recorder.step()
        context.logger.info("epoch %d: accuracy %.3f", epoch, accuracy)
    context.save_checkpoint({"model": model.state_dict()})
    return accuracy


if __name__ == "__main__":
    ps.global_entrypoint()
