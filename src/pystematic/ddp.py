"""``context.ddp(model)``: DistributedDataParallel that still looks like the model.

torch's ``DistributedDataParallel`` hides the model behind ``.module``: its methods and
attributes raise ``AttributeError`` and its state dict keys gain a ``module.`` prefix, so
code written for the plain model breaks only in distributed runs. :class:`DistributedModel`
is DDP (``forward`` goes through it, so gradients are averaged across ranks) that falls
back to the model for everything else. This module imports torch; ``context`` imports it
when a distributed run wraps a model.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistributedModel", "unwrap", "wants_ddp"]

_PREFIX = "module."


class DistributedModel(DistributedDataParallel):
    """DDP whose attributes, methods, parameter names and state dict are the model's.

    - ``model(x)`` runs DDP's forward: gradients are averaged across ranks.
    - Any other attribute the wrapper lacks comes from the model: ``model.encode(x)``
      (which runs on the model alone, without DDP's gradient hooks: fine for inference,
      feature extraction and evaluation), ``model.num_classes``; setting an attribute the
      model already has sets it on the model.
    - ``state_dict()``, ``load_state_dict()``, ``named_parameters()`` and ``named_buffers()``
      use the model's names (no ``module.`` prefix; a prefixed state dict loads too).
    - Pickling it -- ``torch.save(model)``, ``copy.deepcopy(model)`` -- gives the plain model,
      which loads anywhere, without a process group.

    ``isinstance(model, nn.Module)`` holds, ``model.parameters()`` are the model's own
    tensors (an optimizer may be built from either), ``.train()``/``.eval()``/``.to()``
    reach the model; ``model.module`` is the model.
    """

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        # From here on, attributes the model has are set on the model (DDP's own set-up,
        # above, must not land on a model that happens to share a name, e.g. ``device``).
        self.__dict__["_pystematic_ready"] = True

    def _inner(self) -> nn.Module | None:
        modules = self.__dict__.get("_modules")
        return None if modules is None else modules.get("module")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self._inner()
            if inner is None or name == "module":
                raise
            return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        inner = self._inner()
        if (
            inner is not None
            and self.__dict__.get("_pystematic_ready")
            and not name.startswith("_")
            and name not in self.__dict__
            and name in inner.__dict__
        ):
            setattr(inner, name, value)
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        inner = self._inner()
        return sorted(set(super().__dir__()) | (set(dir(inner)) if inner is not None else set()))

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Pickled as the model itself, through stdlib only (``[model][0]``): the file loads
        # without pystematic and without a process group.
        return (operator.getitem, ([self.module], 0))

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The model's state dict: no ``module.`` prefix."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load the model's state dict; one saved from a plain DDP (``module.`` keys) too."""
        return self.module.load_state_dict(
            _without_prefix(state_dict, self.module), strict=strict, assign=assign
        )

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters(prefix, recurse, remove_duplicate)

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return self.module.named_buffers(prefix, recurse, remove_duplicate)


def _without_prefix(state_dict: Mapping[str, Any], module: nn.Module) -> Mapping[str, Any]:
    """``state_dict`` with DDP's ``module.`` prefix taken off, when every key has it and
    the model's own keys do not (a model may have a submodule called ``module``)."""
    from collections import OrderedDict

    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    keys = list(state_dict)
    if not keys or not all(k.startswith(_PREFIX) for k in keys):
        return state_dict
    if any(k.startswith(_PREFIX) for k in module.state_dict()):
        return state_dict
    stripped: Any = OrderedDict(state_dict)  # a copy: the caller's dict stays as it was
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        stripped._metadata = type(metadata)(metadata)
    consume_prefix_in_state_dict_if_present(stripped, _PREFIX)
    return stripped


def wants_ddp(model: nn.Module) -> bool:
    """DDP needs a parameter that trains; a frozen or parameter-free module is left alone."""
    return any(p.requires_grad for p in model.parameters())


def unwrap(model: Any) -> Any:
    """The model inside a DDP wrapper (ours or torch's); anything else as it is."""
    return model.module if isinstance(model, DistributedDataParallel) else model
