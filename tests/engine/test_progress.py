"""Progress of the long steps besides the search: lm-eval requests, shards read, bytes written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import safetensors
import torch
from conftest import MINI_TASK_ITEMS
from transformers import AutoModelForCausalLM, AutoTokenizer, modeling_utils

from mptui.engine.errors import Cancelled
from mptui.engine.model.loading import load_model
from mptui.engine.output.evaluate import EvalRequest, evaluate

MPTUI = Path(sys.executable).parent / "mptui"


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    path = tiny_model_dir("llama")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def mini_request(local_task, batch_size: int = 1) -> EvalRequest:
    return EvalRequest(("mptui_mini",), str(local_task), batch_size=batch_size)


def test_an_evaluation_reports_requests_done_out_of_all(tiny_llama, local_task):
    model, tokenizer = tiny_llama
    seen: list[tuple[int, int]] = []
    plain = evaluate(model, tokenizer, mini_request(local_task))
    reported = evaluate(
        model, tokenizer, mini_request(local_task), progress=lambda *p: seen.append(p)
    )
    requests = sum(len(choices) for _, choices, _ in MINI_TASK_ITEMS)  # one per choice
    assert reported == plain  # watching changes nothing
    assert seen[0] == (0, requests) and seen[-1] == (requests, requests)
    assert all(total == requests for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len({done for done, _ in seen}) > 2  # it moves batch by batch, not only at the ends


def test_one_check_per_batch_asks_cancelled_and_progress_and_either_can_stop(
    tiny_llama, local_task
):
    model, tokenizer = tiny_llama
    asked: list[int] = []
    seen: list[tuple[int, int]] = []

    def cancelled() -> bool:
        asked.append(len(seen))
        return False

    def stop_after_two(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 2:
            raise Cancelled("stopped by the user")  # as the runner's callback does

    with pytest.raises(Cancelled, match="stopped by the user"):
        evaluate(model, tokenizer, mini_request(local_task), cancelled, stop_after_two)
    assert seen[-1][0] == 2 < seen[-1][1]
    assert asked == list(range(len(seen)))  # cancelled first, then progress, each batch


@pytest.fixture(scope="module")
def sharded_llama(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny llama saved again in several safetensors shards, with its tokenizer."""
    source = tiny_model_dir("llama")
    folder = tmp_path_factory.mktemp("sharded") / "llama"
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(folder, max_shard_size="200KB")
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(("model", "config")):
            shutil.copy(path, folder)
    assert len(list(folder.glob("model-*.safetensors"))) >= 3
    return folder


def hook_removed() -> bool:
    return modeling_utils.safe_open is safetensors.safe_open


def test_loading_reports_each_shard_read(sharded_llama, tiny_model_dir):
    shards = len(list(sharded_llama.glob("model-*.safetensors")))
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_shard(done: int, total: int) -> None:
        assert lock.acquire(blocking=False), "two calls at once"
        seen.append((done, total))
        lock.release()

    model, _ = load_model(str(sharded_llama), device="cpu", on_shard=on_shard)
    assert seen == [(k, shards) for k in range(1, shards + 1)]
    assert hook_removed()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    ids = torch.arange(3, 40)[None]
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_a_single_file_checkpoint_is_one_shard(tiny_model_dir):
    seen: list[tuple[int, int]] = []
    load_model(str(tiny_model_dir("llama")), device="cpu", on_shard=lambda *s: seen.append(s))
    assert seen == [(1, 1)] and hook_removed()


@pytest.mark.parametrize("threads", ["async", "sync"])
def test_raising_on_the_first_shard_aborts_the_load(sharded_llama, monkeypatch, threads):
    if threads == "sync":  # transformers' own switch: tensors read in the loading thread
        monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")
    seen: list[tuple[int, int]] = []
    threads_called: list[threading.Thread] = []

    def stop(done: int, total: int) -> None:
        seen.append((done, total))
        threads_called.append(threading.current_thread())
        raise Cancelled("loading cancelled")

    with pytest.raises(Cancelled, match="loading cancelled"):
        load_model(str(sharded_llama), device="cpu", on_shard=stop)
    assert seen == [(1, seen[0][1])] and seen[0][1] >= 3  # and nothing after it
    if threads == "sync":
        assert threads_called == [threading.current_thread()]
    assert hook_removed()
    seen.clear()  # the next load, without a callback, is an ordinary one
    model, _ = load_model(str(sharded_llama), device="cpu")
    assert seen == [] and model.num_parameters() > 0


def test_eval_cli_prints_load_and_evaluation_progress(sharded_llama, local_task):
    done = subprocess.run(
        [str(MPTUI), "eval", str(sharded_llama), "--tasks", "mptui_mini", "--include-path",
         str(local_task), "--batch-size", "1", "--device", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    shards = len(list(sharded_llama.glob("model-*.safetensors")))
    assert f"loading llama: {shards} / {shards} shards (100%)" in lines
    requests = sum(len(choices) for _, choices, _ in MINI_TASK_ITEMS)
    progress = [line for line in lines if line.startswith("evaluating: ")]
    assert progress[0] == f"evaluating: 0 / {requests} requests (0%)"
    assert progress[-1] == f"evaluating: {requests} / {requests} requests (100%)"


def test_an_export_reports_bytes_written_and_the_cli_prints_them(tiny_llama, tmp_path, capsys):
    from safetensors.torch import load_file

    from mptui.engine.output.export import export_model
    from mptui.export_cli import writing_lines

    model, _ = tiny_llama
    plan = {
        "format": "mptui.plan/1",
        "model": {"name_or_path": "acme/tiny-llama", "params_dense": model.num_parameters(),
                  "num_layers": 4, "mlp_width": 128, "attn_width": 64},
        "settings": {}, "dense_score": 10.0, "steps": [],
    }  # fmt: skip
    seen: list[tuple[int, int]] = []
    lines = writing_lines()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        lines(done, total)

    result = export_model(
        model, None, plan, tmp_path / "out", progress=progress, max_shard_bytes=200_000
    )
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    written = [sum(t.nbytes for t in load_file(shard).values()) for shard in shards]
    assert [done for done, _ in seen] == [sum(written[: k + 1]) for k in range(len(shards))]
    assert {total for _, total in seen} == {result.bytes} and result.bytes == sum(written)
    gb = f"{result.bytes / 1e9:.2f}"
    assert capsys.readouterr().err.splitlines()[-1] == f"writing weights: {gb} / {gb} GB (100%)"


def test_progress_lines_are_few_enough_for_a_log():
    from io import StringIO

    from mptui.evaluate_cli import ProgressLines

    now = [0.0]
    out = StringIO()
    lines = ProgressLines("evaluating", clock=lambda: now[0], out=out)
    for done in range(0, 1001):
        now[0] += 0.01  # a request every 10 ms: 10 s in all
        lines(done, 1000)
    lines(1000, 1000)  # told twice that it is over: said once
    printed = out.getvalue().splitlines()
    assert printed[0] == "evaluating: 0 / 1,000 requests (0%)"
    assert printed[-1] == "evaluating: 1,000 / 1,000 requests (100%)"
    assert 8 <= len(printed) <= 12  # about one a tenth, never two a second
