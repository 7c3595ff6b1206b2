"""The demo's recovery on the shipped demo model: a short LoRA fine-tuning on the demo's own
text beats the pruned model on the demo's validation perplexity (seeded, CPU, float32)."""

from __future__ import annotations

import dataclasses

from mptui.demo.recovery import DEMO_DIR, demo_recovery_settings
from mptui.engine.recovery import events as rev
from mptui.engine.recovery.folder import RecoveryFolder
from mptui.engine.recovery.run import prepare_recovery
from mptui.engine.recovery.source import RecoverySource
from mptui.engine.search.plan import Plan, PlanModel, PlanStep, write_json_atomic
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files

#: The costliest removals of the demo's own 25% plan (its blocks and head groups).
DEMO_REMOVALS = [
    Structure("mlp_block", 1),
    Structure("attn_block", 3),
    Structure("attn_heads", 2, 96, 96),
    Structure("attn_heads", 1, 96, 96),
    Structure("attn_heads", 7, 96, 96),
]


def test_the_demo_recovery_beats_the_pruned_demo_model_on_validation_perplexity(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    steps = [PlanStep(i, s, 0.0, 0, 0.0, "user") for i, s in enumerate(DEMO_REMOVALS, start=1)]
    model = PlanModel(str(DEMO_DIR / "model"), 0, 8, 512, 192, dtype="float32")
    write_json_atomic(session / session_files.PLAN, Plan(model, {}, 0.0, steps).to_dict())
    write_json_atomic(session / session_files.SETTINGS, {})
    source = RecoverySource("session", session)
    pruned, tokenizer, _ = source.load()
    # a fifth of the demo's 300 steps keeps the suite quick; the same recipe otherwise
    settings = dataclasses.replace(demo_recovery_settings(), steps=60, eval_every=60)
    events: list = []
    run = prepare_recovery(
        pruned, tokenizer, settings, RecoveryFolder(session), events.append, source
    )
    assert run.run() == "done"
    before, after = (e.perplexity for e in events if isinstance(e, rev.RecoveryValidated))
    assert after < 0.985 * before, (before, after)
