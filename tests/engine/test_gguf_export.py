"""GGUF exports, proven in llama.cpp itself (llama-cpp-python): every family and every kind of
structure a plan removes, the logits and the tokenization of the pruned PyTorch model.

Tolerances: f32 weights with an f32 KV cache agree to float rounding (atol 1e-4 on logits of
magnitude ~3); f16 and q8_0 weights with llama.cpp's default f16 cache within a stated atol,
and the perplexity of real text within 0.5% (f16) and 3% (q8_0).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.tiny import build_tiny_model, tiny_text
from mptui.engine.errors import BadInput, DiskFull, UnsupportedModel
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.output.gguf_export import export_gguf, gguf_layers
from mptui.engine.search.plan import Plan, PlanModel, PlanStep
from mptui.engine.search.structures import Structure

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extra")
gguf = pytest.importorskip("gguf")

GGUF_FAMILIES = ("llama", "mistral", "qwen2", "phi3")
#: One of each: a layer-0 attention (llama.cpp needs heads there: a zero stand-in), an
#: attention-free layer with a narrowed MLP, fewer KV groups with the MLP removed (the graph's
#: trap: a zero one-channel MLP), and a layer removed whole (dropped).
EVERY_KIND = [
    Structure("attn_block", 0),
    Structure("attn_block", 1),
    Structure("mlp_channels", 1, 112, 64),
    Structure("mlp_block", 2),
    Structure("attn_heads", 2, 32, 32),
    Structure("attn_block", 3),
    Structure("mlp_block", 3),
]
TEXT = " ".join(tiny_text(4, seed=3))[:700] + " 1234567 café naïve 日本語!"


def plan_for(path: Path) -> dict:
    return {
        "format": "mptui.plan/1",
        "model": {"name_or_path": str(path), "params_dense": 1, "num_layers": 4,
                  "mlp_width": 176, "attn_width": 64},
        "settings": {}, "dense_score": 1.0, "steps": [],
    }  # fmt: skip


def pruned(path: Path, structures: list[Structure]):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    steps = [PlanStep(i, s, 0.0, 0, 0.0, "user") for i, s in enumerate(structures, start=1)]
    apply_plan(model, Plan(PlanModel(str(path), 0, 4, 0, 0), {}, 0.0, steps))
    return model


class LlamaCpp:
    """A GGUF file loaded in llama.cpp, one thread, closed on exit."""

    def __init__(self, path: Path, *, f32_cache: bool = False) -> None:
        cache = {"type_k": 0, "type_v": 0} if f32_cache else {}
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=512, logits_all=True, n_threads=1, verbose=False, **cache
        )

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc) -> None:
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])

    def metadata(self) -> dict:
        return self.llm.metadata


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return math.exp(-np.mean(log_probs[np.arange(len(ids) - 1), ids[1:]]))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny model of each GGUF family, in folders whose names do not say the family
    (llama.cpp changes special tokens of any model whose name says phi3)."""
    return {
        family: build_tiny_model(family, tmp_path_factory.mktemp(f"m{index}"))
        for index, family in enumerate(GGUF_FAMILIES)
    }


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_every_kind_of_structure_runs_in_llama_cpp_as_in_pytorch(family, models, tmp_path):
    path = models[family]
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    result = export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf", gguf_type="f32")
    assert result.stand_ins == 2  # layer 0's attention, layer 2's MLP
    ids = tokenizer(TEXT)["input_ids"]
    with LlamaCpp(result.path, f32_cache=True) as llm:
        assert llm.tokenize(TEXT) == ids
        meta = llm.metadata()
        got = llm.logits(ids)
    assert meta["general.architecture"] == "deci"
    assert int(meta["deci.block_count"]) == 3  # layer 3 was removed whole
    np.testing.assert_allclose(got, torch_logits(model, ids), rtol=0, atol=1e-4)


def test_the_layers_say_what_llama_cpp_needs(models):
    from mptui.engine.model.adapters import adapter_for

    layers = gguf_layers(adapter_for(pruned(models["llama"], EVERY_KIND)))
    assert [(x.source, x.heads, x.kv_heads, x.ffn) for x in layers] == [
        (0, 2, 1, 176),  # a stand-in KV group of 2 query heads: llama.cpp reads head size here
        (1, 0, 0, 64),
        (2, 4, 2, 1),  # a stand-in MLP channel: a layer with FFN 0 would lose its attention
    ]
    assert [(x.attention_stand_in, x.mlp_stand_in) for x in layers] == [
        (True, False), (False, False), (False, True),
    ]  # fmt: skip


@pytest.mark.parametrize(("gguf_type", "atol", "ppl_margin"), [("f16", 0.02, 0.005),
                                                               ("q8_0", 0.15, 0.03)])  # fmt: skip
def test_half_and_eight_bit_files_stay_within_their_tolerance(
    gguf_type, atol, ppl_margin, models, tmp_path
):
    path = models["qwen2"]  # q/k/v biases
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    out = tmp_path / f"m-{gguf_type}.gguf"
    result = export_gguf(model, tokenizer, plan_for(path), out, gguf_type=gguf_type)
    ids = tokenizer(TEXT)["input_ids"]
    with LlamaCpp(result.path) as llm:
        got = llm.logits(ids)
    want = torch_logits(model, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert perplexity(got, ids) == pytest.approx(perplexity(want, ids), rel=ppl_margin)
    reader = gguf.GGUFReader(out)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.2.attn_q.bias"] == "F32" and kinds["output_norm.weight"] == "F32"
    expected = "Q8_0" if gguf_type == "q8_0" else "F16"
    assert kinds["blk.0.ffn_up.weight"] == expected
    if gguf_type == "q8_0":  # the stand-in's one-channel rows do not fill a block of 32
        assert kinds["blk.2.ffn_down.weight"] == "F16"


def sentencepiece_tokenizer(folder: Path):
    """A Llama-2-style tokenizer (SentencePiece BPE with byte fallback, digits split, spaces
    kept as they are), trained here."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_text(400)), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, split_digits=True, minloglevel=2, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
    )  # fmt: skip
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": True}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(folder)


def byte_level_tokenizer(split: str):
    """A byte-level BPE that splits text like Qwen2 (digits one by one), trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(tiny_text(400), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def with_tokenizer(family: str, tokenizer, folder: Path) -> Path:
    path = build_tiny_model(family, folder, vocab_size=512)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(path)
    return path


def test_a_sentencepiece_tokenizer_is_llama_cpp_s_llama_vocabulary(tmp_path):
    tokenizer = sentencepiece_tokenizer(tmp_path / "spm")
    path = with_tokenizer("llama", tokenizer, tmp_path / "model")
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    out = export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf", gguf_type="f32")
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == 1 and any(3 <= i < 259 for i in ids)  # BOS, and byte fallback for 日本語
    with LlamaCpp(out.path, f32_cache=True) as llm:
        meta = llm.metadata()
        assert llm.tokenize(TEXT) == ids
        # (text that starts with a space is left out: there transformers' Metaspace adds no
        # dummy prefix where SentencePiece and llama.cpp do)
        spaced = "two  spaces\nand a line  "
        assert llm.tokenize(spaced) == tokenizer(spaced)["input_ids"]
        got = llm.logits(ids)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == ("1", "2")
    np.testing.assert_allclose(got, torch_logits(model, ids), rtol=0, atol=1e-4)


def test_a_qwen2_style_byte_level_tokenizer_keeps_its_pre_tokenizer(tmp_path):
    from mptui.engine.output.gguf_vocab import KNOWN_SPLITS

    split = next(regex for regex, name in KNOWN_SPLITS.items() if name == "qwen2")
    path = with_tokenizer("qwen2", byte_level_tokenizer(split), tmp_path / "model")
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    out = export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf", gguf_type="f32")
    text = TEXT + " <|im_start|>user 2024-12-06"
    with LlamaCpp(out.path) as llm:
        meta = llm.metadata()
        assert llm.tokenize(text) == tokenizer(text)["input_ids"]
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["tokenizer.ggml.model"] == "gpt2"


def test_an_unknown_pre_tokenizer_is_refused_in_one_line(tmp_path):
    path = with_tokenizer("llama", byte_level_tokenizer(r"\p{L}+|\s+|."), tmp_path / "model")
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    with pytest.raises(UnsupportedModel, match="no pre-tokenizer matching") as raised:
        export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf")
    assert "\n" not in str(raised.value)
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".m.gguf*")) == []


def test_the_demo_model_keeps_its_tied_embeddings_and_half_precision(tmp_path):
    """The demo stores float16 and ties its LM head to the embeddings: one tensor, f16."""
    from mptui.cli import DEMO_DIR

    path = DEMO_DIR / "model"
    model = pruned(path, [Structure("mlp_block", 5), Structure("attn_heads", 2, 96, 96)])
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = export_gguf(model, tokenizer, plan_for(path), tmp_path / "demo.gguf")
    assert result.gguf_type == "f16"
    names = {t.name for t in gguf.GGUFReader(result.path).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    ids = tokenizer(TEXT)["input_ids"]
    with LlamaCpp(result.path) as llm:
        got = llm.logits(ids)
    want = torch_logits(model, ids)
    assert perplexity(got, ids) == pytest.approx(perplexity(want, ids), rel=0.005)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 16, "rope_theta": 500000.0},
    ],
)  # fmt: skip
def test_rope_scaling_is_carried(rope, tmp_path):
    path = build_tiny_model("llama", tmp_path / "model", rope_parameters=rope)
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    out = export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf", gguf_type="f32")
    ids = tokenizer(TEXT)["input_ids"][:120]
    with LlamaCpp(out.path, f32_cache=True) as llm:
        got = llm.logits(ids)
    np.testing.assert_allclose(got, torch_logits(model, ids), rtol=0, atol=1e-4)


def test_a_rope_scaling_llama_cpp_cannot_reproduce_is_refused(tmp_path):
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    path = build_tiny_model("llama", tmp_path / "model", rope_parameters=rope)
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    with pytest.raises(UnsupportedModel, match="RoPE scaling 'dynamic' is not supported"):
        export_gguf(model, tokenizer, plan_for(path), tmp_path / "m.gguf")


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_families_llama_cpp_cannot_run_are_refused_naming_what_works(
    family, tiny_model_dir, tmp_path
):
    path = tiny_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with pytest.raises(UnsupportedModel) as raised:
        export_gguf(model, AutoTokenizer.from_pretrained(path), plan_for(path), tmp_path / "m.gguf")
    message = str(raised.value)
    assert f"a {family} model cannot be written as GGUF" in message
    assert "supports llama, mistral, qwen2, phi3" in message and "(format safetensors)" in message
    assert list(tmp_path.iterdir()) == []


def test_destinations_are_checked_and_only_a_gguf_is_replaced(models, tmp_path):
    path = models["llama"]
    model, tokenizer = pruned(path, EVERY_KIND), AutoTokenizer.from_pretrained(path)
    for out, message in [
        (tmp_path / "missing" / "m.gguf", "does not exist"),
        (tmp_path / "m.bin", "name ending in .gguf"),
    ]:
        with pytest.raises(BadInput, match=message):
            export_gguf(model, tokenizer, plan_for(path), out)
    precious = tmp_path / "notes.gguf"
    precious.write_text("mine")
    with pytest.raises(BadInput, match="is not a GGUF file"):
        export_gguf(model, tokenizer, plan_for(path), precious)
    assert precious.read_text() == "mine"
    out = tmp_path / "m.gguf"
    export_gguf(model, tokenizer, plan_for(path), out, gguf_type="f32")
    export_gguf(model, tokenizer, plan_for(path), out, gguf_type="f16")  # replaces the GGUF
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 1  # mostly f16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "notes.gguf"]


def test_a_full_disk_leaves_nothing_behind(small_disk, models):
    path = models["llama"]
    model, tokenizer = pruned(path, []), AutoTokenizer.from_pretrained(path)
    with pytest.raises(DiskFull, match=f"no space left on device in {small_disk}"):
        export_gguf(model, tokenizer, plan_for(path), small_disk / "m.gguf", gguf_type="f32")
    assert list(small_disk.iterdir()) == []


def test_the_cli_exports_a_session_as_gguf_and_refuses_bad_input(
    models, calibration_file, tmp_path, capsys
):
    from conftest import headless_session

    session = headless_session(models["mistral"], calibration_file, tmp_path / "session")
    code, err = run_cli(
        ["export", str(session), "--out", str(tmp_path / "m.gguf"), "--gguf-type", "q8_0"], capsys
    )
    assert code == 0, err
    with LlamaCpp(tmp_path / "m.gguf") as llm:
        assert llm.metadata()["general.file_type"] == "7"  # mostly q8_0
    for argv, message in [
        (["--out", str(tmp_path / "x.gguf"), "--gguf-type", "q4_k"], "invalid choice: 'q4_k'"),
        (["--out", str(tmp_path / "x"), "--format", "gguf"], "name ending in .gguf"),
        (["--out", str(tmp_path / "no" / "x.gguf")], "does not exist"),
        (["--out", str(tmp_path / "x.gguf"), "--format", "safetensors"], "names a GGUF file"),
    ]:
        code, err = run_cli(["export", str(session), *argv], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "session"]


def test_a_run_refuses_a_gguf_export_of_a_family_llama_cpp_cannot_run_before_it_starts(
    tiny_model_dir, calibration_file, tmp_path, capsys
):
    argv = [str(tiny_model_dir("qwen3")), "--headless", "--calibration", str(calibration_file),
            "--seqlen", "32", "--session", str(tmp_path / "s"), "--export",
            str(tmp_path / "m.gguf")]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2 and "a qwen3 model cannot be written as GGUF" in err
    assert not (tmp_path / "s").exists()
