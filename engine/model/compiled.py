"""The residual sub-blocks run through ``torch.compile``, or eagerly (docs/method.md §4).

Compiling fuses what eager PyTorch runs as separate kernels (RMSNorm, RoPE, SwiGLU, the
residual add). It changes no structure and no order of the search: the same modules compute the
same function, to floating-point tolerance. The two runner functions receive the modules as
arguments, so every layer of a model shares one compiled graph (their parameters are inputs).

Widths change all the time: a width trial runs a layer on narrowed views of its weights, and
every commit leaves that layer narrower. By default dynamo treats parameter shapes as constants,
so each new width compiled again until its recompile limit (8) was hit, after which it silently
ran that function eagerly for the rest of the run. :data:`DYNAMIC_WIDTHS` lets parameter shapes
be dynamic: the first width compiles a static graph, the next a graph for any width, which
serves every later trial and commit (one more pair per device under a device map). A storm that
still reaches the limit fails loudly into the eager fallback below instead of hiding.

Compiling is tried on the first call; if it fails for any reason (no compiler, an unsupported
platform or model), the runner says so once and runs eagerly from then on. An out-of-memory is
not a compile failure, even inside the compiler or as a cuBLAS allocation failure: it goes to
the caller as torch's OutOfMemoryError, and the caller lowers the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .memory import as_out_of_memory, is_out_of_memory

#: Dynamo settings for every compiled call (read when a frame compiles, so set per call): shapes
#: of parameters may be dynamic, and reaching the recompile limit raises (the runner falls back
#: to eager and says so) instead of silently running eagerly. The limit leaves room for a static
#: and a dynamic graph on each of eight devices, and the last, smaller batch.
DYNAMIC_WIDTHS = {
    "force_parameter_static_shapes": False,
    "force_nn_module_property_static_shapes": False,
    "recompile_limit": 32,
    "fail_on_recompile_limit_hit": True,
}


def attention_sub_block(
    block: nn.Module, norm: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]
) -> torch.Tensor:
    return hidden + block(norm(hidden), **kwargs)[0]


def mlp_sub_block(block: nn.Module, norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return hidden + block(norm(hidden))


def resolve_backend(mode: str, device: torch.device) -> str | None:
    """The ``torch.compile`` backend for ``mode`` on ``device``; None runs eagerly."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    return "inductor" if mode == "auto" else mode


class SubBlockRunner:
    """Runs attention and MLP sub-blocks, compiled with ``backend`` (None: eagerly)."""

    def __init__(self, backend: str | Callable | None, on_warning: Callable[[str], None]) -> None:
        """``backend``: a ``torch.compile`` backend (a name or a callable); None runs eagerly."""
        self.backend = backend
        self._on_warning = on_warning
        self._attention: Callable[..., torch.Tensor] = attention_sub_block
        self._mlp: Callable[..., torch.Tensor] = mlp_sub_block
        #: DYNAMIC_WIDTHS as one reusable context: building it costs several times entering it.
        self._dynamo_settings = torch._dynamo.config.patch(DYNAMIC_WIDTHS)
        if backend is not None:
            self._attention = torch.compile(attention_sub_block, backend=backend)
            self._mlp = torch.compile(mlp_sub_block, backend=backend)

    def attention(
        self, block: nn.Module, norm: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        return self._call(self._attention, attention_sub_block, block, norm, hidden, kwargs)

    def mlp(self, block: nn.Module, norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return self._call(self._mlp, mlp_sub_block, block, norm, hidden)

    def _call(self, compiled: Callable, eager: Callable, *args: Any) -> torch.Tensor:
        if self.backend is None:
            return eager(*args)
        try:
            with self._dynamo_settings:
                return compiled(*args)
        except Exception as error:  # anything else compile raises: run eagerly from now on
            if is_out_of_memory(error):  # also inside a compile: the caller lowers the batch
                raise as_out_of_memory(error) from error
            self._fall_back(error)
            return eager(*args)

    def _fall_back(self, error: Exception) -> None:
        message = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        self._on_warning(f"torch.compile ({self.backend}) failed, scoring runs eagerly: {message}")
        self.backend = None
        self._attention, self._mlp = attention_sub_block, mlp_sub_block
