"""Loading a model and its tokenizer the way transformers does, with errors a user can act on."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import BadInput, setting
from ..names import check_model_path, looks_like_path
from .facts import ModelFacts, check_supported
from .memory import is_out_of_memory

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(
    dtype: str | None,
    device: str,
    checkpoint: torch.dtype | None = None,
    bf16_supported: Callable[[], bool] | None = None,
) -> torch.dtype:
    """``auto``: float32 on the CPU (half precision is slow there); on a GPU the checkpoint's
    own half precision, and bfloat16 for a float32 (or unstated) checkpoint when the GPU
    supports it, else float32."""
    if dtype in (None, "auto"):
        if not device.startswith("cuda"):
            return torch.float32
        if checkpoint in (torch.float16, torch.bfloat16):
            return checkpoint
        supported = bf16_supported or torch.cuda.is_bf16_supported
        return torch.bfloat16 if supported() else torch.float32
    if dtype not in DTYPES:
        raise BadInput(setting("dtype"), f" '{dtype}' must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def checkpoint_dtype(config) -> torch.dtype | None:
    """The precision a checkpoint says it was saved in (``dtype``, formerly ``torch_dtype``)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        return DTYPES.get(value)
    return value if isinstance(value, torch.dtype) else None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_mptui_export(name_or_path: str) -> bool:
    """A local folder written by ``mptui export`` that needs its carried modeling code.

    The folder's code then runs as ``trust_remote_code=True`` would run it, because the user
    named this folder; a hub model that asks for remote code is refused by transformers as usual.
    """
    config = Path(name_or_path).expanduser() / "config.json"
    try:
        return "mptui_layout" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def load_config(name_or_path: str):
    """The model's config, from its folder or (a hub id) the local Hugging Face cache first:
    see :func:`cache_only`."""
    return _load_config(name_or_path, cache_only(name_or_path))


def _load_config(name_or_path: str, local_only: bool):
    from transformers import AutoConfig

    check_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(
            os.path.expanduser(name_or_path),
            trust_remote_code=is_mptui_export(name_or_path),
            local_files_only=local_only,
        )
    except (OSError, ValueError) as error:
        raise BadInput(
            f"could not load model '{name_or_path}': it is not a local model folder and not in "
            f"the Hugging Face cache, or the hub is unreachable ({_first_line(error)})"
        ) from error


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, also when
    it was set after huggingface_hub was imported (a test, a notebook)."""
    from huggingface_hub import constants

    now = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(
        value in ("1", "ON", "YES", "TRUE") for value in now
    )


def cache_only(name_or_path: str) -> bool:
    """Whether a hub id is read from the local Hugging Face cache alone (``local_files_only``).

    A cached model (its ``config.json`` is in the cache) never touches the network: it loads
    the same offline, online or with the hub down. An uncached one, offline, is one line at
    once; online, the hub is asked once, without retries, for its ``config.json``: a model that
    does not exist, a gated one or no network is one line within seconds, where transformers
    would retry a dead network five times (about half a minute) and print each retry.
    A local folder is False: nothing to download.
    """
    if looks_like_path(name_or_path):  # a local folder: nothing to download
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError as error:  # not a repo id the hub could have ("a b", "x--y")
        raise BadInput(f"could not load model '{name_or_path}': {_first_line(error)}") from None
    if isinstance(cached, str):
        return True
    if hub_offline():
        raise BadInput(
            f"could not load model '{name_or_path}': it is not a local folder nor in the Hugging "
            "Face cache, and HF_HUB_OFFLINE is set (download it where the hub is reachable, or "
            "give its folder)"
        )
    _ask_the_hub(name_or_path)
    return False


#: Hub ids the hub has answered for in this process: the config check and the model load both
#: ask, and one request is enough.
_ANSWERED: set[str] = set()


def _ask_the_hub(repo_id: str) -> None:
    """One request for the model's ``config.json``, no retries; what went wrong as one line."""
    if repo_id in _ANSWERED:
        return
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    url = hf_hub_url(repo_id, "config.json")
    try:
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        _ANSWERED.add(repo_id)
        return
    except GatedRepoError:
        problem = (
            "it is gated on the Hugging Face hub: accept its conditions on its page, then log "
            "in here (hf auth login)"
        )
    except RepositoryNotFoundError:
        problem = "no such model on the Hugging Face hub (if it is private: hf auth login)"
    except EntryNotFoundError:
        problem = "it has no config.json on the Hugging Face hub (not a transformers model)"
    except HfHubHTTPError as error:
        problem = f"the Hugging Face hub answered {_first_line(error)}"
    except Exception as error:  # no network: httpx's connect errors and timeouts, OSError
        problem = (
            f"its files are not all in the Hugging Face cache and the hub ({constants.ENDPOINT}) "
            f"cannot be reached ({type(error).__name__}: {_first_line(error)})"
        )
    raise BadInput(f"could not load model '{repo_id}': {problem}")


def check_device(device: str | None) -> None:
    """A GPU asked for where torch sees none (a resume on the box whose GPU failed): one line,
    before anything loads."""
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(setting("device"), f" {device} asked for a GPU but torch sees none")


def load_model(
    name_or_path: str,
    *,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
    on_shard: Callable[[int, int], None] | None = None,
):
    """Return ``(model, tokenizer)`` in eval mode with gradients off and SDPA attention.

    ``on_shard(done, total)`` is called each time one more checkpoint shard has been read
    (see :class:`_ShardReads`), ending with ``(total, total)``. It may raise (a stop asked for
    by the user): that ends the load within the shard being read, and the error propagates.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = cache_only(name_or_path)
    config = _load_config(name_or_path, local_only)
    check_supported(ModelFacts.from_config(config))
    device = device or default_device()
    check_device(device)
    torch_dtype = resolve_dtype(dtype, device, checkpoint_dtype(config))
    path = os.path.expanduser(name_or_path)
    carried_code = is_mptui_export(path)

    def read(local_only: bool):
        with _reporting_shard_reads(on_shard) as reads:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=torch_dtype,
                device_map=device_map or device,  # straight onto the device, not via the CPU
                attn_implementation="sdpa",
                trust_remote_code=carried_code,
                local_files_only=local_only,
                # transformers does not pass local_files_only on to its look for a peft
                # adapter: without this, a cached model would still ask the hub (and retry)
                adapter_kwargs={"local_files_only": local_only},
            )
            reads.finish()
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=carried_code, local_files_only=local_only
        )
        return model, tokenizer

    try:
        try:
            model, tokenizer = read(local_only)
        except OSError as error:
            if not local_only:
                raise
            if hub_offline():
                raise BadInput(
                    f"could not load model '{name_or_path}': its files are not all in the Hugging "
                    f"Face cache, and HF_HUB_OFFLINE is set ({_first_line(error)})"
                ) from error
            _ask_the_hub(name_or_path)  # the config was cached, the weights not (a cut download)
            model, tokenizer = read(False)
    except OSError as error:
        raise BadInput(f"could not load model '{name_or_path}': {_first_line(error)}") from error
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        raise BadInput(
            "out of memory while loading the model; use ",
            setting("device_map"),
            " auto or a smaller ",
            setting("dtype"),
        ) from error
    if any(p.device.type == "meta" for p in model.parameters()):
        raise BadInput("the device map offloads weights to disk; give it enough GPU/CPU memory")
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


class _ShardReads:
    """Checkpoint shards read so far during one ``from_pretrained``, told to ``on_shard``.

    transformers 5 opens every safetensors shard lazily (``safe_open`` in ``modeling_utils``),
    then reads the tensors in key order on a small thread pool. Each shard's handle is wrapped
    here so that reading a tensor (``slice[...]``) is counted; a shard is read when all its
    tensors are. ``on_shard`` is so called from those loader threads, one call at a time; what
    it raises is re-raised by transformers in the loading thread when it collects that tensor.
    Tensors the model does not take are never read: their shards count at :meth:`finish`.
    """

    def __init__(self, on_shard: Callable[[int, int], None] | None) -> None:
        self._on_shard = on_shard
        self._lock = threading.Lock()
        self._unread: dict[str, set[str]] = {}  # shard file -> keys not read yet
        self._done = 0
        self._stopped = on_shard is None

    def wrap(self, file: str, handle):
        with self._lock:
            self._unread.setdefault(os.path.realpath(file), set(handle.keys()))
        return _CountingHandle(handle, self, os.path.realpath(file))

    def read(self, file: str, key: str) -> None:
        with self._lock:
            unread = self._unread[file]
            if key in unread:
                unread.discard(key)
                if not unread:
                    self._report()

    def finish(self) -> None:
        """The load is over: shards with tensors nobody read count now, and a checkpoint this
        did not see shard by shard (``.bin``, a load without ``safe_open``) counts as one."""
        with self._lock:
            if not self._unread:
                self._unread[""] = {""}
            for unread in self._unread.values():
                if unread:
                    unread.clear()
                    self._report()
            self._stopped = True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True  # a loader thread still running after an error stays quiet

    def _report(self) -> None:
        if self._stopped:
            return
        self._done += 1
        try:
            self._on_shard(self._done, len(self._unread))
        except BaseException:
            self._stopped = True
            raise


class _CountingHandle:
    """A safetensors file handle whose slices tell :class:`_ShardReads` when they are read."""

    def __init__(self, handle, reads: _ShardReads, file: str) -> None:
        self._handle, self._reads, self._file = handle, reads, file

    def get_slice(self, key: str):
        return _CountingSlice(self._handle.get_slice(key), self._reads, self._file, key)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._handle.__exit__(*exc_info)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


class _CountingSlice:
    def __init__(self, tensor_slice, reads: _ShardReads, file: str, key: str) -> None:
        self._slice, self._reads, self._file, self._key = tensor_slice, reads, file, key

    def __getitem__(self, index):
        tensor = self._slice[index]
        self._reads.read(self._file, self._key)
        return tensor

    def __getattr__(self, name: str):
        return getattr(self._slice, name)


_HOOK_LOCK = threading.Lock()
_LOADING: dict[int, _ShardReads] = {}  # loading thread -> its shard reads
_UNHOOKED: dict[str, Callable] = {}


@contextmanager
def _reporting_shard_reads(on_shard: Callable[[int, int], None] | None) -> Iterator[_ShardReads]:
    """Count the shard reads of the ``from_pretrained`` this thread runs inside the block.

    ``modeling_utils.safe_open`` is wrapped while any such block runs (in any thread) and put
    back when the last one ends, also on an error; the wrapper passes other threads' handles
    through untouched. Without the hook (another transformers), :meth:`_ShardReads.finish`
    still reports the load as one shard.
    """
    reads = _ShardReads(on_shard)
    if on_shard is None:
        yield reads
        return
    from transformers import modeling_utils

    thread = threading.get_ident()
    with _HOOK_LOCK:
        if not _LOADING and callable(getattr(modeling_utils, "safe_open", None)):
            original = _UNHOOKED["safe_open"] = modeling_utils.safe_open

            def safe_open(filename, *args, **kwargs):
                handle = original(filename, *args, **kwargs)
                loading = _LOADING.get(threading.get_ident())
                return handle if loading is None else loading.wrap(str(filename), handle)

            modeling_utils.safe_open = safe_open
        _LOADING[thread] = reads
    try:
        yield reads
    finally:
        reads.stop()
        with _HOOK_LOCK:
            del _LOADING[thread]
            if not _LOADING and "safe_open" in _UNHOOKED:
                modeling_utils.safe_open = _UNHOOKED.pop("safe_open")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
