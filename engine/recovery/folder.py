"""Recovery's part of the session folder.

``recovery/settings.json``   what was asked (settings and the model it trains), written once
``recovery/calibration.txt`` an export's recovery only: the text its load scores the model on
``recovery/checkpoint.pt``   adapter, optimizer, scheduler, RNG and step: replaced atomically
                             (write, fsync, rename) every ``--save-every`` steps and at a stop
``recovery/adapter/``        the peft adapter of the last save, for ``--export-adapter``
``recovery.jsonl``           one line per optimizer step and per validation, for reading

A kill at any moment leaves the last complete checkpoint; resume continues from it, so the
steps since are done again, identically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..errors import BadInput
from ..session.disk import append_line, write_bytes_atomic, write_json_atomic
from ..session.files import (
    RECOVERY,
    RECOVERY_CALIBRATION,
    RECOVERY_CHECKPOINT,
    RECOVERY_LOG,
    RECOVERY_SETTINGS,
)
from .settings import RecoverySettings
from .source import RecoverySource


class RecoveryFolder:
    def __init__(self, session: Path) -> None:
        self.session = Path(session)
        self.path = self.session / RECOVERY

    @property
    def started(self) -> bool:
        return (self.path / RECOVERY_SETTINGS).is_file()

    @property
    def checkpoint(self) -> Path:
        return self.path / RECOVERY_CHECKPOINT

    # --- settings ---------------------------------------------------------------------------
    def write_settings(self, settings: RecoverySettings, source: RecoverySource) -> None:
        """``source``: where the pruned model comes from, so a resume loads it the same way."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"settings": settings.to_dict(), "model": source.to_dict()}
        write_json_atomic(self.path / RECOVERY_SETTINGS, record)

    def read_settings(self) -> tuple[RecoverySettings, RecoverySource]:
        try:
            data = json.loads((self.path / RECOVERY_SETTINGS).read_text())
            return RecoverySettings.from_dict(data["settings"]), RecoverySource.from_dict(
                data["model"]
            )
        except FileNotFoundError:
            raise BadInput(f"'{self.session}' has no recovery to continue") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise BadInput(f"{self.path / RECOVERY_SETTINGS} is damaged ({error!r})") from None

    def write_calibration(self, text: str) -> Path:
        """The text the load of an export's recovery scores the model on; its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / RECOVERY_CALIBRATION
        write_bytes_atomic(path, text.encode())
        return path

    # --- checkpoint -------------------------------------------------------------------------
    def save(self, state: dict) -> None:
        """Serialized in memory first, so a full disk fails in one place: the write beside the
        checkpoint, which is then removed (the last complete checkpoint stays)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(self.checkpoint, buffer.getbuffer())

    def load(self) -> dict | None:
        """The last checkpoint, checked against the recovery's settings (its adapter's rank)."""
        if not self.checkpoint.is_file():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged file
            raise BadInput(f"{self.checkpoint} is damaged ({type(error).__name__})") from None
        if self.started:
            self._check_rank(state, self.read_settings()[0].rank)
        return state

    def _check_rank(self, state: dict, rank: int) -> None:
        """LoRA's A is ``rank x in`` and its B ``out x rank``: a checkpoint of another rank
        would fail deep inside peft, after the model loaded."""
        adapter = state.get("adapter") if isinstance(state, dict) else None
        if not isinstance(adapter, dict):
            raise BadInput(f"{self.checkpoint} is damaged (no 'adapter')")
        for key, tensor in adapter.items():
            if "lora_A" not in key and "lora_B" not in key:
                continue
            found = tensor.shape[0] if "lora_A" in key else tensor.shape[-1]
            if found != rank:
                raise BadInput(
                    f"{self.checkpoint} key {key!r} is of rank {found}; this recovery's "
                    f"{RECOVERY_SETTINGS} says rank {rank}"
                )

    def saved_step(self) -> int:
        state = self.load()
        return state["step"] if state else 0

    def card_info(self) -> dict | None:
        """What an export's model card says of the saved recovery (None: none saved)."""
        state = self.load()
        if state is None:
            return None
        settings, _ = self.read_settings()
        validations = {
            r["step"]: r["val_perplexity"] for r in self.read_log() if "val_perplexity" in r
        }
        return {
            "settings": settings.to_dict(),
            "step": state["step"],
            "pruned_perplexity": validations.get(0),
            "perplexity": validations.get(state["step"]),
        }

    # --- log --------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        append_line(self.session / RECOVERY_LOG, json.dumps(record) + "\n", fsync=False)

    def read_log(self) -> list[dict]:
        path = self.session / RECOVERY_LOG
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records


def recovered_model(pruned, session: Path):
    """``pruned`` (rebuilt from the session) with the session's saved adapter merged into it,
    in place; None when the session holds no recovery."""
    from peft import set_peft_model_state_dict

    from .lora import add_adapters

    folder = RecoveryFolder(session)
    state = folder.load()
    if state is None:
        return None
    settings, _ = folder.read_settings()
    wrapped = add_adapters(pruned, settings)
    set_peft_model_state_dict(wrapped, state["adapter"])
    return wrapped.merge_and_unload().eval()
