"""Give one module instance its own forward, safely: the one way this project patches a module's forward.

A forward bound to an instance (`module.forward = MethodType(f, module)`) lives in the instance's `__dict__`. When
`nn.DataParallel` replicates the model, each replica starts as a shallow copy of that `__dict__`
(`Module._replicate_for_data_parallel`), so it would keep a forward bound to the ORIGINAL module: the replica on
cuda:1 would run cuda:0's weights on its cuda:1 inputs ("Expected all tensors to be on the same device"), or, on one
device, silently compute with the original's parameters. `bind_forward` also gives the instance a replication method
that rebinds every such method to the replica. The class is never changed.
"""

from __future__ import annotations

import types
from typing import Callable

import torch


def bind_forward(module: torch.nn.Module, function: Callable) -> None:
    """module.forward = function(module, ...), also in the module's nn.DataParallel replicas (bound to each replica)."""
    module.__dict__["forward"] = types.MethodType(function, module)
    module.__dict__["_replicate_for_data_parallel"] = types.MethodType(_replicate_rebinding, module)


def _replicate_rebinding(self: torch.nn.Module) -> torch.nn.Module:
    replica = type(self)._replicate_for_data_parallel(self)
    for name, value in list(vars(replica).items()):
        if isinstance(value, types.MethodType) and value.__self__ is self:  # copied from self's __dict__
            replica.__dict__[name] = types.MethodType(value.__func__, replica)
    return replica


def has_own_forward(module: torch.nn.Module) -> bool:
    """Whether the instance carries a forward of its own (ours or another wrapper's), not only its class's."""
    own = vars(module).get("forward")
    return own is not None and getattr(own, "__func__", None) is not type(module).forward
