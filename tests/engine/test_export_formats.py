"""The Export command's format (issue 27): ``Export(format="gguf")`` on a real engine writes one
GGUF file that llama.cpp loads, reported as the safetensors export is (progress, ``Exported``);
what the engine cannot write (a qwen3 model, an unknown format or type, a bad destination, a
full disk) is one line in a Notice, and the run goes on."""

from __future__ import annotations

import pytest
from test_control import finish, make_engine

from mptui.engine.api import (
    describe_gguf,
)
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extra")


@pytest.fixture
def llama(tiny_model_dir):
    return tiny_model_dir("llama")


def paused_after_a_commit(engine, log) -> None:
    engine.send(cmd.Pause())  # paused once loaded, before step 1 can start
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Override("L2.mlp"))
    log.wait_count(ev.StepCommitted, 1)


def export_failures(log) -> list[str]:
    return [n.message for n in log.of(ev.Notice) if n.message.startswith("export failed")]


def test_a_gguf_export_mid_run_loads_in_llama_cpp_and_the_run_goes_on(
    llama, calibration_file, tmp_path
):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    paused_after_a_commit(engine, log)
    out = tmp_path / "pruned.gguf"
    engine.send(cmd.Export(str(out), format="gguf", gguf_type="f16"))
    log.wait_count(ev.Exported, 1)
    (exported,) = log.of(ev.Exported)
    assert (exported.path, exported.format, exported.gguf_type) == (str(out), "gguf", "f16")
    assert exported.bytes == out.stat().st_size and exported.params > 0 and not exported.stock
    assert out.read_bytes()[:4] == b"GGUF"
    assert describe_gguf(exported).startswith(f"exported to {out}: GGUF (f16), ")
    assert "\n" not in describe_gguf(exported)
    # progress as for a folder: the bytes written out of the total, then the activity is over
    activities = log.of(ev.Activity)
    assert activities[-1] == ev.Activity(None, time=activities[-1].time)
    writing = [a for a in activities if a.kind is ev.ActivityKind.EXPORT and a.total]
    assert writing and writing[-1].done == writing[-1].total
    assert {a.label for a in writing} == {f"exporting to {out}"}
    assert log.state() == "paused"  # written now, stays paused
    Llama = llama_cpp.Llama
    Llama(str(out), verbose=False, n_threads=1).close()
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"
    assert export_failures(log) == []


def test_a_qwen3_gguf_export_is_one_line_and_the_run_goes_on(
    tiny_model_dir, calibration_file, tmp_path
):
    engine, log = make_engine(tiny_model_dir("qwen3"), calibration_file, tmp_path)
    paused_after_a_commit(engine, log)
    out = tmp_path / "qwen3.gguf"
    engine.send(cmd.Export(str(out), format="gguf", gguf_type="f16"))
    log.wait_for(lambda log: export_failures(log))
    (line,) = export_failures(log)
    assert "a qwen3 model cannot be written as GGUF" in line and "\n" not in line
    assert not out.exists() and log.of(ev.Exported) == []
    assert log.of(ev.Activity)[-1].kind is None  # the export is over: quitting is allowed
    engine.send(cmd.Export(str(tmp_path / "folder")))  # the folder export still works
    log.wait_count(ev.Exported, 1)
    assert log.of(ev.Exported)[0].format == "safetensors"
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (cmd.Export("{out}", format="onnx"),
         "unknown export format 'onnx': choose safetensors or gguf"),
        (cmd.Export("{out}.gguf", format="gguf", gguf_type="q4_k"),
         "unknown GGUF type 'q4_k': choose one of f32, f16, bf16, q8_0"),
        (cmd.Export("{out}", gguf_type="f16"),
         "a GGUF type ('f16') goes with the gguf format only; a safetensors export keeps the "
         "weights' precision"),
        (cmd.Export("{out}", format="gguf"), "a name ending in .gguf"),
        (cmd.Export("{tmp}/missing/x.gguf", format="gguf"),
         "folder '{tmp}/missing' does not exist"),
        (cmd.Export("", format="gguf"), "export to '': give a path"),
    ],
    ids=["format", "gguf-type", "type-without-gguf", "no-suffix", "no-folder", "no-path"],
)  # fmt: skip
def test_what_the_engine_cannot_write_is_refused_in_one_line(
    command, message, llama, calibration_file, tmp_path
):
    import dataclasses

    engine, log = make_engine(llama, calibration_file, tmp_path)
    paused_after_a_commit(engine, log)
    out = tmp_path / "out"
    path = command.path.format(out=out, tmp=tmp_path)
    engine.send(dataclasses.replace(command, path=path))
    log.wait_for(lambda log: export_failures(log))
    (line,) = export_failures(log)
    assert message.format(tmp=tmp_path) in line and "\n" not in line
    assert log.of(ev.Exported) == [] and log.state() == "paused"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"


def test_a_gguf_export_to_a_full_disk_is_a_notice_and_the_run_goes_on(
    llama, calibration_file, tmp_path, small_disk
):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    paused_after_a_commit(engine, log)
    engine.send(cmd.Export(str(small_disk / "pruned.gguf"), format="gguf", gguf_type="f32"))
    log.wait_for(lambda log: export_failures(log))
    (line,) = export_failures(log)
    assert line.startswith(f"export failed: no space left on device in {small_disk}")
    assert list(small_disk.iterdir()) == []  # nothing half written
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"


def test_after_a_recovery_a_gguf_export_holds_the_recovered_weights(
    llama, calibration_file, tmp_path
):
    """Once a recovery has run, Export writes the recovered model (the adapter merged on a
    copy), as the folder export does: the GGUF's weights are the merged ones, bit for bit."""
    import gguf
    import numpy as np

    from mptui.engine.api import RecoverySettings, recovery_events
    from mptui.engine.model.adapters import adapter_for
    from mptui.engine.output.gguf_export import gguf_layers

    engine, log = make_engine(
        llama, calibration_file, tmp_path, linger=True, session_dir=tmp_path / "session",
        target_ratio=0.2,
    )  # fmt: skip
    recovery = RecoverySettings(
        data=str(calibration_file), steps=3, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=3, save_every=3, val_examples=4, lr=1e-3,
    )  # fmt: skip
    engine.start()
    try:
        log.wait_count(ev.Finished, 1)
        engine.send(cmd.Recover(recovery))
        log.wait_count(recovery_events.RecoveryFinished, 1)
        out = tmp_path / "recovered.gguf"
        engine.send(cmd.Export(str(out), format="gguf", gguf_type="f32"))
        log.wait_count(ev.Exported, 1)
        assert export_failures(log) == [] and log.of(ev.Exported)[0].format == "gguf"
        merged, pruned = engine.recovery.merged(), engine.pruning.model
        layer = next(g for g in gguf_layers(adapter_for(merged)) if g.ffn and not g.mlp_stand_in)
        number = gguf_layers(adapter_for(merged)).index(layer)
        (tensor,) = [
            t for t in gguf.GGUFReader(out).tensors if t.name == f"blk.{number}.ffn_down.weight"
        ]
        recovered = merged.model.layers[layer.source].mlp.down_proj.weight.detach()
        before = pruned.model.layers[layer.source].mlp.down_proj.weight.detach()
        written = np.asarray(tensor.data).reshape(recovered.shape)
        assert np.array_equal(written, recovered.float().numpy())
        assert not np.array_equal(written, before.float().numpy())
        Llama = llama_cpp.Llama
        Llama(str(out), verbose=False, n_threads=1).close()
    finally:
        engine.send(cmd.Stop())
        assert engine.join(60)
