"""The defaults of a run, in one place (docs/method.md §3), free of torch.

The CLI's help shows them, so ``mptui --help`` imports this module and must stay fast: import
nothing here that loads torch, transformers or Textual. :mod:`mptui.engine.search.settings`
re-exports
every name.
"""

from __future__ import annotations

from .search.structures import DIMENSIONS, Dimension

#: Stop when ``1 - params/params_dense`` reaches this (the reference's 22%).
DEFAULT_TARGET_RATIO = 0.22
#: Shares of the target per dimension, in the order of :data:`DEFAULT_ORDER`.
DEFAULT_DISTRIBUTION = "44:52:4"
#: The order the dimensions are pruned in.
DEFAULT_ORDER: tuple[Dimension, ...] = DIMENSIONS
#: Calibration documents sampled (0: all, in file order).
DEFAULT_NSAMPLES = 0
#: Tokens per calibration chunk, and rows of a rolling perplexity.
DEFAULT_SEQLEN = 2048
#: Calibration chunks per forward; None: from the device's memory (engine/model/batching.py).
DEFAULT_BATCH_SIZE: int | None = None
#: ``--compile``: ``auto`` compiles the scoring sub-blocks on a GPU only (on the CPU the compile
#: time outweighs the gain for the models one prunes there), ``off`` never, or a
#: ``torch.compile`` backend by name (engine/model/compiled.py).
COMPILE_MODES = ("auto", "off", "inductor", "aot_eager")
DEFAULT_COMPILE = "auto"
#: ``--fast-margin``: standard errors behind the leader that rule a candidate out (--fast).
DEFAULT_FAST_MARGIN = 1.0
#: ``--fast-tolerance``: a candidate that cannot beat the leader's perplexity by more than this
#: (relative) is ruled out too: such near-ties are below what bf16 scoring resolves anyway.
DEFAULT_FAST_TOLERANCE = 1e-4
#: The calibration sampler's seed.
DEFAULT_SEED = 42
#: The field of ``.jsonl`` / ``.parquet`` / datasets rows that holds the text.
DEFAULT_TEXT_FIELD = "text"
#: Load precision: bf16 on a GPU, fp32 on the CPU.
DEFAULT_DTYPE = "auto"
#: lm-eval's batch size for an evaluation.
DEFAULT_EVAL_BATCH_SIZE = 8
#: The app's theme.
DEFAULT_THEME = "mptui-dark"

# --- recovery (docs/method.md §10): the reference's LoRA fine-tuning after pruning -------------
#: LoRA rank and scaling numerator (the adapter's update is scaled by alpha / rank).
DEFAULT_LORA_RANK = 16
DEFAULT_LORA_ALPHA = 32
#: Dropout on the adapter's input, as the reference's alpaca-lora recipe.
DEFAULT_LORA_DROPOUT = 0.05
#: Short names of the projections that get an adapter (``q`` matches ``q_proj``).
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
#: AdamW's learning rate, after a linear warm-up, decaying linearly to 0 at the last step.
DEFAULT_RECOVERY_LR = 1e-4
DEFAULT_RECOVERY_WARMUP = 100
#: Optimizer steps.
DEFAULT_RECOVERY_STEPS = 3000
#: Examples per forward (micro-batch) and micro-batches per optimizer step.
DEFAULT_RECOVERY_BATCH = 8
DEFAULT_RECOVERY_GRAD_ACCUM = 4
#: Longest training example in tokens (the reference's cutoff); longer ones are cut.
DEFAULT_RECOVERY_SEQLEN = 256
#: Optimizer steps between validation perplexities, and between saves of the training state.
DEFAULT_RECOVERY_EVAL_EVERY = 200
DEFAULT_RECOVERY_SAVE_EVERY = 100
#: Examples held out of --data for the validation perplexity when no --val-data is given.
DEFAULT_RECOVERY_VAL_EXAMPLES = 64
