"""What the engine says, in the CLI's words: its settings as flags, its ways on as commands.

The engine names a setting by the name a script passes (``attn_group``) and words it so in
``str()`` (engine/errors.py); every line mptui prints or shows of the engine's words (its
errors, notices and end line) goes through :func:`cli_words`, so ``attn_group 24 is not whole
KV groups`` reads ``--attn-group 24 is not whole KV groups`` here. This module is the one
table of those flags: a setting the engine names and it lacks is a failing test
(tests/unit/test_flags.py), not a Python name in a CLI line.

Imports nothing heavy: ``mptui --help`` must not load torch.
"""

from __future__ import annotations

#: Each setting the engine names, by its key (a scope before the name where two share one),
#: and the flag that sets it.
FLAGS: dict[str, str] = {
    # the search (``mptui MODEL``) and what loads a model in every command
    "attn_group": "--attn-group",
    "batch_size": "--batch-size",
    "block_count": "--block-count",
    "calibration": "--calibration",
    "compile": "--compile",
    "device": "--device",
    "device_map": "--device-map",
    "distribution": "--distribution",
    "dtype": "--dtype",
    "faithful": "--faithful",
    "fast": "--fast",
    "fast_margin": "--fast-margin",
    "fast_tolerance": "--fast-tolerance",
    "gpus_per_worker": "--gpus-per-worker",
    "method": "--method",
    "mlp_group": "--mlp-group",
    "nsamples": "--nsamples",
    "order": "--order",
    "resume": "--resume",
    "seqlen": "--seqlen",
    "session": "--session",
    "target_ratio": "--target-ratio",
    "text_field": "--text-field",
    "workers": "--workers",
    # serving and attaching
    "listen": "--listen",
    "token": "--token",
    # exports (``mptui export``)
    "export.path": "--out",
    "format": "--format",
    "gguf_type": "--gguf-type",
    # evaluations and comparisons
    "include_path": "--include-path",
    "force": "--force",
    "speed": "--speed",
    "speed.gguf_type": "--speed-gguf-type",
    "speed.repeats": "--speed-repeats",
    # the recovery (``mptui recover``)
    "recovery.alpha": "--alpha",
    "recovery.batch_size": "--batch-size",
    "recovery.data": "--data",
    "recovery.eval_every": "--eval-every",
    "recovery.grad_accum": "--grad-accum",
    "recovery.gradient_checkpointing": "--gradient-checkpointing",
    "recovery.lr": "--lr",
    "recovery.rank": "--rank",
    "recovery.save_every": "--save-every",
    "recovery.seqlen": "--seqlen",
    "recovery.steps": "--steps",
    "recovery.targets": "--targets",
    "recovery.val_data": "--val-data",
    "recovery.warmup": "--warmup",
}

#: The ways on the engine names, as the commands that take them (``{}``: the session folder).
COMMANDS: dict[str, str] = {
    "resume": "mptui --resume {}",
    "recover": "`mptui recover SESSION`",
}


def cli_words(said: object) -> str:
    """``said`` in the CLI's words: an engine error, a ``Notice`` or ``Error`` event, a
    ``Message``, or any other value (its ``str()``, as it stands)."""
    from mptui.engine.api import Message, Term, events

    if isinstance(said, events.Said):
        said = said.said
    words = []
    for part in Message.of(said).parts:
        if part.kind is Term.SETTING:
            # a newer engine attached to may name a setting this table lacks: its own name
            words.append(FLAGS.get(part.value, str(part)))
        elif part.kind is Term.TEXT:
            words.append(part.value)
        else:
            words.append(COMMANDS[part.kind].format(part.value))
    return "".join(words)


__all__ = ["COMMANDS", "FLAGS", "cli_words"]
