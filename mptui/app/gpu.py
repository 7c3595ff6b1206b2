"""GPU memory as nvidia-smi shows it (NVML), or None when there is no NVIDIA GPU."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used: int
    total: int


class NvmlReader:
    """Reads used/total per device; initialises NVML once and degrades to no GPU quietly."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # no driver, no library, no device: all mean "no GPU"
            self._nvml = None
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def read(self) -> list[GpuMemory]:
        if self._nvml is None:
            return []
        out = []
        for index, handle in enumerate(self._handles):
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            name = self._nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            out.append(GpuMemory(index, name, int(info.used), int(info.total)))
        return out
