"""GPU memory as nvidia-smi shows it (NVML), or None when there is no NVIDIA GPU.

NVML numbers the devices as nvidia-smi does; torch numbers the ones ``CUDA_VISIBLE_DEVICES``
lets it see, in that order (and by default fastest first, not by PCI bus). So the two are matched
by UUID: with ``CUDA_VISIBLE_DEVICES=2,0`` torch's ``cuda:0`` is nvidia-smi's GPU 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    index: int  # NVML's (nvidia-smi's) number
    name: str
    used: int
    total: int
    uuid: str = ""
    torch_index: int | None = (
        None  # torch's ``cuda:N`` for this device; None: torch does not see it
    )

    @property
    def label(self) -> str:
        if self.torch_index is None:
            return f"GPU{self.index} {self.name}"
        return f"cuda:{self.torch_index} (GPU{self.index}) {self.name}"


def torch_device_uuids() -> list[str] | None:
    """The UUID of each device torch sees, in torch's order; None until torch has initialised
    CUDA (the engine does as it loads a model): asking earlier would make the app create a CUDA
    context of its own, memory on a GPU the run may not even use."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_initialized():
        return None
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def bare_uuid(uuid: str | bytes) -> str:
    """``GPU-8f2e…`` (NVML) and ``8f2e…`` (torch) alike as ``8f2e…``, lower case."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return text.strip().lower().removeprefix("gpu-")


class NvmlReader:
    """Reads used/total per device; initialises NVML once and degrades to no GPU quietly.

    ``nvml`` (the ``pynvml`` module by default) and ``torch_uuids`` (:func:`torch_device_uuids`)
    are there to be replaced in tests, which have no GPU.
    """

    def __init__(
        self, nvml=None, torch_uuids: Callable[[], list[str] | None] = torch_device_uuids
    ) -> None:
        self._nvml = None
        self._handles: list = []
        self._uuids: list[str] = []
        self._torch_uuids = torch_uuids
        self._torch_index: dict[str, int] | None = None
        try:
            if nvml is None:
                import pynvml as nvml

            nvml.nvmlInit()
            self._handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
            ]
            self._uuids = [bare_uuid(nvml.nvmlDeviceGetUUID(h)) for h in self._handles]
            self._nvml = nvml
        except Exception:  # no driver, no library, no device: all mean "no GPU"
            self._nvml = None
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def torch_index(self) -> dict[str, int]:
        """``{uuid: torch index}``, asked of torch until it answers (then it never changes)."""
        if self._torch_index is None:
            try:
                uuids = self._torch_uuids()
            except Exception:  # a torch without ``uuid`` or a broken driver: no matching
                uuids = []
            if uuids is None:
                return {}
            self._torch_index = {bare_uuid(uuid): i for i, uuid in enumerate(uuids)}
        return self._torch_index

    def read(self) -> list[GpuMemory]:
        if self._nvml is None:
            return []
        torch_index = self.torch_index()
        out = []
        for index, (handle, uuid) in enumerate(zip(self._handles, self._uuids, strict=True)):
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            name = self._nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            out.append(
                GpuMemory(index, name, int(info.used), int(info.total), uuid, torch_index.get(uuid))
            )
        return out
