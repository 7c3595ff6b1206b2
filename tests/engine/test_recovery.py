"""Recovery: LoRA fine-tuning of a pruned model, its session state, resume and export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import weights_file
from safetensors.torch import load_file

from bench.tiny import tiny_text
from mptui.engine.api import CalibrationSpec, PruneSettings, RunRequest, SessionFolder
from mptui.engine.errors import DiskFull
from mptui.engine.recovery import events as rev
from mptui.engine.recovery.data import IGNORE, alpaca_prompt, instruction_example
from mptui.engine.recovery.folder import RecoveryFolder
from mptui.engine.recovery.run import prepare_recovery
from mptui.engine.recovery.settings import RecoverySettings
from mptui.engine.recovery.source import RecoverySource
from mptui.engine.search.plan import Plan, PlanModel, PlanStep, write_json_atomic
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files

PRUNED = [
    Structure("attn_block", 1),
    Structure("mlp_channels", 0, 112, 64),
    Structure("attn_heads", 2, 32, 32),
]


def make_session(folder: Path, model: Path, structures=PRUNED) -> Path:
    """A session folder as the search leaves it: its settings (calibrating on a text of its
    own), a journal line per step and plan.json."""
    folder.mkdir(parents=True)
    calibration = folder / "calibration.txt"
    calibration.write_text("\n\n".join(tiny_text(8)) + "\n")
    spec = CalibrationSpec(str(calibration), nsamples=0, seqlen=32)
    request = RunRequest(
        str(model), PruneSettings.with_distribution(0.2, None, calibration=spec), dtype="float32"
    )
    session = SessionFolder(folder)
    session.write_request(request)
    steps = [PlanStep(i, s, 0.0, 0, 0.0, "user") for i, s in enumerate(structures, start=1)]
    for step in steps:
        session.record_commit(step)
    plan = Plan(PlanModel(str(model), 0, 4, 176, 64, dtype="float32"), {}, 0.0, steps)
    write_json_atomic(folder / session_files.PLAN, plan.to_dict())
    return folder


@pytest.fixture
def session(tiny_model_dir, tmp_path) -> Path:
    return make_session(tmp_path / "session", tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recovery") / "text.txt"
    path.write_text("\n\n".join(tiny_text(12)) + "\n")
    return path


def settings(data: Path, **changes) -> RecoverySettings:
    values = dict(steps=6, batch_size=2, grad_accum=2, seqlen=32, eval_every=3, save_every=2,
                  warmup=2, val_examples=4)  # fmt: skip
    return RecoverySettings(data=str(data), **(values | changes))


def start(session: Path, recovery: RecoverySettings, events: list | None = None):
    source = RecoverySource("session", session)
    model, tokenizer, plan = source.load()
    emit = events.append if events is not None else (lambda event: None)
    return prepare_recovery(model, tokenizer, recovery, RecoveryFolder(session), emit, source), plan


def adapter(session: Path) -> dict:
    return RecoveryFolder(session).load()["adapter"]


class Killed(Exception):
    """Stands for a SIGKILL: the run ends where it is, nothing saved."""


def test_a_run_killed_and_resumed_ends_with_the_adapter_of_an_uninterrupted_run(
    session, tiny_model_dir, text_file, tmp_path, capsys
):
    from mptui.cli import main as cli_main

    whole = make_session(tmp_path / "whole", tiny_model_dir("llama"))
    events: list = []
    run, _ = start(whole, settings(text_file), events)
    assert run.run() == "done"
    steps = [e for e in events if isinstance(e, rev.RecoveryStep)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[2].lr == pytest.approx(1e-4) and steps[-1].lr < steps[2].lr  # warm-up, decay

    polls = iter(range(100))

    def kill_after_five_steps() -> bool:
        if next(polls) == 5:
            raise Killed
        return False

    run, _ = start(session, settings(text_file))
    with pytest.raises(Killed):
        run.run(poll=kill_after_five_steps)
    assert RecoveryFolder(session).saved_step() == 4  # step 5 was never saved
    assert cli_main(["--resume", str(session), "--headless"]) == 0
    out = capsys.readouterr().out
    assert "recovering 6 steps from step 4" in out and "RECOVERING step 6/6" in out
    want, got = adapter(whole), adapter(session)
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert not torch.equal(want[next(iter(want))], torch.zeros_like(want[next(iter(want))]))


def test_adapters_skip_removed_blocks_and_fit_narrowed_projections(session, text_file):
    run, _ = start(session, settings(text_file, targets=("q", "down")))
    wrapped = {
        name.removeprefix("base_model.model.model."): module
        for name, module in run.trainer.model.named_modules()
        if hasattr(module, "lora_A")
    }
    assert sorted(wrapped) == sorted(
        [
            *(f"layers.{i}.mlp.down_proj" for i in range(4)),
            *(f"layers.{i}.self_attn.q_proj" for i in (0, 2, 3)),  # layer 1's attention: removed
        ]
    )
    for module in wrapped.values():
        base = module.base_layer
        assert module.lora_A["default"].weight.shape == (16, base.in_features)
        assert module.lora_B["default"].weight.shape == (base.out_features, 16)
    assert wrapped["layers.0.mlp.down_proj"].base_layer.in_features == 64  # narrowed from 176
    assert wrapped["layers.2.self_attn.q_proj"].base_layer.out_features < 64  # fewer heads


#: Loads an export where neither mptui nor peft can be imported, and saves its logits.
LOADER = """
import sys
sys.modules["mptui"] = sys.modules["peft"] = None  # importing either fails, as if not installed
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
with torch.inference_mode():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def unique_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def test_a_recovered_export_is_the_merged_model_and_loads_without_mptui_or_peft(
    session, text_file, tmp_path, small_disk
):
    run, plan = start(session, settings(text_file, steps=2, eval_every=1))
    assert run.run() == "done"
    pruned, _, _ = RecoverySource("session", session).load()
    ids = torch.randint(3, 500, (2, 20), generator=torch.Generator().manual_seed(1))
    merged = run.merged()
    with torch.inference_mode():
        want = merged(ids).logits
        assert not torch.allclose(want, pruned(ids).logits, atol=1e-4)  # training changed it
    result = run.export(plan, tmp_path / "export")
    assert result.params == unique_parameters(pruned) == unique_parameters(merged)
    stored = load_file(weights_file(tmp_path / "export"))
    assert not any("lora" in name for name in stored)
    card = (tmp_path / "export" / "README.md").read_text()
    assert "recovered by LoRA fine-tuning" in card and "2 of 2 steps" in card
    torch.save(ids, tmp_path / "ids.pt")
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "export"), str(tmp_path / "ids.pt"),
         str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, rtol=0, atol=1e-5)
    run.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["peft_type"] == "LORA"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 64 * 1024
    with pytest.raises(DiskFull, match=f"in {small_disk} while writing the adapter 'adapter'"):
        run.save_adapter(small_disk / "adapter")  # a 64 KiB disk: whole or nothing
    assert list(small_disk.iterdir()) == []


def folder_bytes(folder: Path) -> dict:
    """Every file of the folder and its content, the transient lock file aside."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != session_files.LOCK
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("fields", "has no text 'output' field"),
        ("target", "has no module 'nope'"),
        ("seqlen", "above this model's limit"),
        ("no steps", "removed nothing"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_session_as_it_was(
    case, message, session, tiny_model_dir, text_file, tmp_path, capsys
):
    from mptui.recover_cli import main

    if case == "no steps":
        session = make_session(tmp_path / "empty-session", tiny_model_dir("llama"), [])
    data = {
        "missing": tmp_path / "nowhere.jsonl",
        "empty": tmp_path / "empty.txt",
        "fields": tmp_path / "rows.jsonl",
    }.get(case, text_file)
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"instruction": "Say hi.", "reply": "hi"}))
    extra = {"target": ["--targets", "q,nope"], "seqlen": ["--seqlen", "100000"]}.get(case, [])
    before = folder_bytes(session)
    capsys.readouterr()
    assert main([str(session), "--data", str(data), "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("loading ")]
    assert len(errors) == 1 and errors[0].startswith("mptui: error: ") and message in err, err
    assert folder_bytes(session) == before


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(
    session, tiny_model_dir, text_file, tmp_path
):
    plain = make_session(tmp_path / "plain", tiny_model_dir("llama"))
    reference, _ = start(plain, settings(text_file, steps=1, dropout=0.0))
    reference.run()
    events: list = []
    run, _ = start(session, settings(text_file, steps=1, dropout=0.0), events)

    def out_of_memory_at_two(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    run.trainer.model.register_forward_pre_hook(out_of_memory_at_two, with_kwargs=True)
    run.run()
    step = next(e for e in events if isinstance(e, rev.RecoveryStep))
    assert (step.micro_batch, step.grad_accum) == (1, 4)
    notices = [e.message for e in events if type(e).__name__ == "Notice"]
    assert notices == [
        "out of memory: now 1 examples per forward and 4 forwards per optimizer step "
        "(the effective batch is unchanged)"
    ]
    want, got = adapter(plain), adapter(session)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)


def test_instruction_rows_take_the_loss_on_the_response_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    row = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    example = instruction_example(row, tokenizer, 256)
    prompt = tokenizer(alpaca_prompt(row))["input_ids"]
    assert "### Response:\n" in alpaca_prompt(row) and "### Input" not in alpaca_prompt(row)
    assert list(example.labels[: len(prompt)]) == [IGNORE] * len(prompt)
    learned = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(learned[:-1]) == "Blue." and learned[-1] == tokenizer.eos_token_id
    assert example.input_ids[len(prompt) :] == tuple(learned)
    assert len(instruction_example(row, tokenizer, 5).input_ids) == 5


def test_eval_and_export_of_a_recovered_session_use_the_recovered_model(
    session, text_file, tmp_path, capsys
):
    from mptui.evaluate_cli import main as evaluate
    from mptui.export_cli import main as export

    run, _ = start(session, settings(text_file, steps=3, lr=1e-3))
    assert run.run() == "done"
    merged = run.merged()
    capsys.readouterr()
    assert (
        evaluate(["--session", str(session), "--perplexity", str(text_file), "--seqlen", "32"]) == 0
    )
    results = json.loads(capsys.readouterr().out)
    dense, pruned, recovered = (results[k]["perplexity"] for k in ("dense", "pruned", "recovered"))
    assert recovered < pruned != dense  # trained on this very text
    summary = (session / session_files.SUMMARY_MD).read_text()
    assert "| metric | dense | pruned | recovered |" in summary
    assert (
        f"| perplexity | {round(dense, 4)} | {round(pruned, 4)} | {round(recovered, 4)} |"
        in summary
    )
    assert export([str(session), "--out", str(tmp_path / "export")]) == 0
    assert "recovered by LoRA" in (tmp_path / "export" / "README.md").read_text()
    stored = load_file(weights_file(tmp_path / "export"))
    for name, tensor in merged.state_dict().items():
        if name in stored:
            torch.testing.assert_close(stored[name], tensor, rtol=0, atol=0)
    assert sum(t.numel() for t in stored.values()) == unique_parameters(merged)


def test_an_export_recovers_in_a_session_folder_of_its_own(session, text_file, tmp_path, capsys):
    from mptui.engine.output.export import export_model
    from mptui.recover_cli import main

    pruned, tokenizer, plan = RecoverySource("session", session).load()
    export_model(pruned, tokenizer, plan, tmp_path / "export")
    state = tmp_path / "state"
    argv = [str(tmp_path / "export"), "--data", str(text_file), "--steps", "2", "--seqlen", "32",
            "--batch-size", "2", "--grad-accum", "1", "--session", str(state),
            "--export", str(tmp_path / "recovered"),
            "--export-adapter", str(tmp_path / "adapter")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "exported to" in out and "recovery done: validation perplexity" in out
    assert f"adapter written to {tmp_path / 'adapter'}" in out
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert RecoveryFolder(state).read_settings()[1] == RecoverySource("export", tmp_path / "export")
    assert RecoveryFolder(state).saved_step() == 2
    stored = load_file(weights_file(tmp_path / "recovered"))
    assert sum(t.numel() for t in stored.values()) == unique_parameters(pruned)


def test_parquet_instruction_rows_and_gradient_checkpointing(session, tmp_path):
    """A parquet of Alpaca rows trains; with gradient checkpointing the step is the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"instruction": f"Repeat the number {n}.", "input": "" if n % 2 else "twice",
         "output": f"{n} {n}"}
        for n in range(12)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    adapters = []
    for checkpointing, where in ((False, session), (True, tmp_path / "again")):
        if checkpointing:
            plan = json.loads((session / session_files.PLAN).read_text())
            make_session(where, Path(plan["model"]["name_or_path"]))
        recovery = settings(tmp_path / "rows.parquet", steps=1, dropout=0.0, seqlen=256,
                            gradient_checkpointing=checkpointing)  # fmt: skip
        run, _ = start(where, recovery)
        assert (len(run.trainer.train), len(run.trainer.val)) == (8, 4)
        assert run.run() == "done"
        adapters.append(adapter(where))
    for name in adapters[0]:
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=0, atol=1e-6)


def test_headless_lines_warn_of_a_lowered_micro_batch_once_training_runs():
    import io

    from mptui.engine.control.events import Notice
    from mptui.headless import RecoveryLines

    out = io.StringIO()
    lines = RecoveryLines(out=out)
    lines(Notice("group sizes: a note of the search"))  # the search's printer shows those
    lines(rev.RecoveryStarted(0, 10, 100, 1000, 8, 2, {}))
    lines(Notice("out of memory: now 4 examples per forward"))
    lines(rev.RecoveryValidated(0, 12.0))
    lines(rev.RecoveryValidated(10, 9.5))
    lines(rev.RecoveryFinished("done", 10, 10))
    assert out.getvalue().splitlines() == [
        "recovering 10 steps: 100 adapter parameters on 1,000; 8 training, 2 validation examples",
        "mptui: warning: out of memory: now 4 examples per forward",
        "step 0: validation perplexity 12.0000",
        "step 10: validation perplexity 9.5000",
        "recovery done: validation perplexity 12.0000 -> 9.5000",
    ]


def test_a_recovery_sigkilled_mid_run_resumes_to_the_uninterrupted_adapter(
    tiny_model_dir, text_file, tmp_path
):
    """A real ``kill -9`` of ``mptui recover`` between saves, then ``mptui --resume``."""
    from mptui.recover_cli import build_parser, settings_from_args

    options = {
        "--data": text_file, "--steps": 120, "--batch-size": 2, "--grad-accum": 2,
        "--seqlen": 32, "--eval-every": 1000, "--save-every": 10, "--warmup": 10,
    }  # fmt: skip
    arguments = [str(part) for option in options.items() for part in option]
    whole = make_session(tmp_path / "whole", tiny_model_dir("llama"))
    run, _ = start(whole, settings_from_args(build_parser().parse_args([str(whole), *arguments])))
    assert run.run() == "done"

    killed = make_session(tmp_path / "killed", tiny_model_dir("llama"))
    command = [sys.executable, "-m", "mptui", "recover", str(killed), *arguments]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = RecoveryFolder(killed)
    deadline = time.monotonic() + 240
    while folder.saved_step() < 20:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    saved = folder.saved_step()
    assert 20 <= saved < 120  # killed part-way, after a save
    resumed = subprocess.run(
        [sys.executable, "-m", "mptui", "--resume", str(killed), "--headless"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"recovering 120 steps from step {saved}" in resumed.stdout
    want, got = adapter(whole), adapter(killed)
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        assert torch.equal(want[name], got[name]), name
