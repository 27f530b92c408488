"""``context.ddp`` / ``track``: a DDP wrapper that is still the model for everything but forward.

These tests build real DDP objects in a one-rank gloo group in this process (an in-memory
store, no port); tests/test_transparent.py trains through the wrapper on two real ranks.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pystematic import checkpoint
from pystematic.context import Context
from pystematic.ddp import DistributedModel
from pystematic.params import Params
from pystematic.recording import Recorder


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, self.num_classes)
        self.register_buffer("calls", torch.zeros(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))


@pytest.fixture
def group() -> Iterator[None]:
    """A real one-rank gloo process group."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def distributed_context(tmp_path: Path, group: None) -> Iterator[Context]:
    """A context that takes itself for rank 0 of 2 (wrapping needs only the group above)."""
    recorder = Recorder(tmp_path, backends=["jsonl"], rank=0, world_size=2)
    yield Context(
        params=Params({}),
        output_dir=tmp_path,
        seed=1,
        recorder=recorder,
        rank=0,
        world_size=2,
        device=torch.device("cpu"),
    )
    recorder.close()


def test_the_wrapper_is_the_model_but_for_forward(distributed_context: Context) -> None:
    net = Net()
    model = distributed_context.ddp(net)
    assert isinstance(model, DistributedModel) and isinstance(model, DistributedDataParallel)
    assert isinstance(model, nn.Module) and model.module is net
    x = torch.randn(5, 4)
    assert torch.equal(model.encode(x), net.encode(x))  # a method of the model
    assert model.num_classes == 3  # an attribute of the model
    model.num_classes = 4  # sets the model's own attribute, not a shadow on the wrapper
    assert net.num_classes == 4 and "num_classes" not in model.__dict__
    model.note = "new"  # a name the model lacks lives on the wrapper
    assert model.note == "new" and not hasattr(net, "note")
    assert "encode" in dir(model)
    with pytest.raises(AttributeError, match="nothing"):
        _ = model.nothing
    # forward is DDP's; .train()/.eval() reach the model.
    assert torch.equal(model(x), net(x))
    model.eval()
    assert not net.training
    model.train()
    assert net.training


def test_names_and_state_dict_are_the_models(distributed_context: Context) -> None:
    net = Net()
    model = distributed_context.ddp(net)
    plain_keys = list(net.state_dict())
    assert list(model.state_dict()) == plain_keys
    assert plain_keys == ["calls", "body.weight", "body.bias", "head.weight", "head.bias"]
    assert [name for name, _ in model.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert [name for name, _ in model.named_buffers()] == ["calls"]
    assert [id(p) for p in model.parameters()] == [id(p) for p in net.parameters()]

    other = Net()
    model.load_state_dict(other.state_dict())  # plain keys
    assert torch.equal(net.body.weight, other.body.weight)
    third = Net()
    prefixed = {f"module.{k}": v for k, v in third.state_dict().items()}  # a bare DDP's
    model.load_state_dict(prefixed)
    assert torch.equal(net.head.bias, third.head.bias)
    assert all(k.startswith("module.") for k in prefixed)  # the caller's dict is untouched


def test_an_optimizer_from_either_object_trains_the_model(distributed_context: Context) -> None:
    net = Net()
    model = distributed_context.ddp(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = net.body.weight.detach().clone()
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(net.body.weight, before)


def test_saving_or_copying_the_wrapper_gives_the_plain_model(
    distributed_context: Context,
) -> None:
    net = Net()
    model = distributed_context.ddp(net)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is Net
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.parameters(), net.parameters(), strict=True)
    )
    clone = copy.deepcopy(model)
    assert type(clone) is Net and clone.body.weight is not net.body.weight


def test_modules_that_do_not_train_are_moved_not_wrapped(distributed_context: Context) -> None:
    relu = nn.ReLU()
    assert distributed_context.ddp(relu) is relu
    frozen = Net().requires_grad_(False)
    assert distributed_context.ddp(frozen) is frozen
    already = DistributedDataParallel(Net())
    assert distributed_context.ddp(already) is already
    model, optimizer = distributed_context.track(
        model=Net(), optimizer=torch.optim.SGD(Net().parameters(), 0.1)
    )
    assert isinstance(model, DistributedModel) and isinstance(optimizer, torch.optim.SGD)


def test_not_distributed_ddp_is_only_a_move(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, backends=["jsonl"])
    try:
        ctx = Context(
            params=Params({}),
            output_dir=tmp_path,
            seed=1,
            recorder=recorder,
            device=torch.device("cpu"),
        )
        net = Net()
        assert ctx.ddp(net) is net
    finally:
        recorder.close()


def test_checkpoints_hold_the_plain_state_dict(distributed_context: Context) -> None:
    model = distributed_context.track(model=Net())
    assert list(checkpoint.state_of({"model": model})["model"]) == list(model.module.state_dict())
