"""Recovery: LoRA fine-tuning of a pruned model, the phase after the search (docs/method.md §10).

``settings`` (plain values) and ``events`` load no torch; the rest does.
"""
