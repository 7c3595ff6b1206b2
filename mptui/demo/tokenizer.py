"""The byte-level BPE tokenizer the demo model is trained with (``mptui.demo.build``); the tiny
test models of bench/tiny.py train theirs the same way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: BOS, EOS and unknown token at once.
SPECIAL = "<|endoftext|>"


def train_byte_level_bpe(
    vocab_size: int, *, texts: Iterable[str] = (), files: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on ``texts`` or ``files``, wrapped for transformers, with
    ``<|endoftext|>`` as its BOS, EOS and unknown token (the demo model uses it too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if files:
        tokenizer.train(list(files), trainer=trainer)
    else:
        tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL
    )
