"""The export dialog (issue 27): a safetensors folder or one GGUF file of a chosen type, by
keyboard alone, in 80x24; the real engine writes what was picked, in one process and attached
over the session socket, and what it cannot write is the usual notice while the run goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_replay import NoGpu, Publisher, fixed_run_events
from test_app import make_app, steps, wait_until
from test_attached_app import served_run
from textual.widgets import Input, RadioSet

from mptui.app.app import MptuiApp
from mptui.app.screens import GGUF_CHOICES, ExportScreen
from mptui.app.state import display_name
from mptui.engine.api import (
    GGUF_TYPES,
    commands,
    session_files,
)


def notices(app: MptuiApp) -> list[str]:
    return [notification.message for notification in app._notifications]


async def open_export(pilot, app: MptuiApp) -> ExportScreen:
    await pilot.press("x")
    await wait_until(
        pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
    )
    await pilot.pause()
    return app.screen


def path_field(screen: ExportScreen) -> Input:
    return screen.query_one("#export-path", Input)


async def choose_gguf(pilot, screen: ExportScreen) -> None:
    """From the path field (focused first): back to the formats, down to GGUF."""
    assert screen.focused is path_field(screen)
    await pilot.press("shift+tab")  # the GGUF types are off for a folder: tab skips them
    assert screen.focused.id == "export-format"
    await pilot.press("down")
    await pilot.pause()
    assert screen.format == "gguf"


class StillEngine(Publisher):
    """An engine stand-in that takes commands and never runs."""

    def start(self) -> None:
        pass

    def join(self, timeout=None) -> bool:
        return False


def test_the_dialog_offers_every_gguf_type_the_engine_writes():
    assert sorted(GGUF_CHOICES) == sorted(GGUF_TYPES) and GGUF_CHOICES[0] == "f16"


async def test_the_dialog_fits_80x24_and_is_driven_by_keys_alone(tmp_path):
    engine = StillEngine()
    session = tmp_path / "session"
    app = MptuiApp(engine, replay=fixed_run_events(), gpu_reader=NoGpu(), session_dir=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.state.model == "demo-llama")
        screen = await open_export(pilot, app)
        assert path_field(screen).value == str(session / session_files.EXPORT)
        assert screen.query_one("#gguf-row").disabled
        await choose_gguf(pilot, screen)
        gguf_file = session / "demo-llama-pruned.gguf"  # the offer follows the format
        assert path_field(screen).value == str(gguf_file)
        assert path_field(screen).placeholder == "NAME.gguf"
        assert not screen.query_one("#gguf-row").disabled
        await pilot.press("tab")
        assert screen.focused.id == "gguf-type"
        await pilot.press("right", "right")  # q8_0, then bf16: arrows choose
        await pilot.pause()
        assert screen.gguf_type == "bf16"
        for widget in screen.query("*"):  # nothing of the dialog is cut off at 80x24
            if widget.display and widget.region.area:
                assert screen.region.contains_region(widget.region), widget
        await pilot.press("tab")
        assert screen.focused is path_field(screen)
        path_field(screen).value = str(tmp_path / "pruned")  # no .gguf: refused in place
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and "a GGUF file's name ends in .gguf" in notices(app)
        path_field(screen).value = str(tmp_path / "pruned.gguf")
        await pilot.press("shift+tab", "shift+tab")  # enter exports from the formats too
        assert screen.focused.id == "export-format"
        await pilot.press("enter")
        await wait_until(pilot, lambda: engine.received)
        assert engine.received == [
            commands.Export(str(tmp_path / "pruned.gguf"), format="gguf", gguf_type="bf16")
        ]
        # the next export offers the last choice; escape leaves and sends nothing
        screen = await open_export(pilot, app)
        assert screen.format == "gguf" and screen.gguf_type == "bf16"
        assert screen.query_one("#export-format", RadioSet).pressed_index == 1
        assert path_field(screen).value == str(gguf_file)
        await pilot.press("shift+tab", "shift+tab")  # past the types, to the formats
        assert screen.focused.id == "export-format"
        await pilot.press("up")  # back to a folder: its offer comes back
        await pilot.pause()
        assert screen.format == "safetensors" and screen.query_one("#gguf-row").disabled
        assert path_field(screen).value == str(session / session_files.EXPORT)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExportScreen) and len(engine.received) == 1


async def test_export_a_gguf_file_from_the_app(tiny_model_dir, calibration_file, tmp_path):
    llama = tiny_model_dir("llama")
    session = tmp_path / "session"
    app = make_app(llama, calibration_file, tmp_path, session=session)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.state.finished == "done")
        screen = await open_export(pilot, app)
        await choose_gguf(pilot, screen)
        out = session / f"{display_name(str(llama)).rpartition('/')[2]}-pruned.gguf"
        assert path_field(screen).value == str(out)
        await pilot.press("tab", "right")  # q8_0
        await pilot.press("enter")
        # the notice comes in a message of its own, after the state
        await wait_until(pilot, lambda: any(n.startswith("exported to") for n in notices(app)))
        exported = app.state.exported
        assert (exported.path, exported.format, exported.gguf_type) == (str(out), "gguf", "q8_0")
        assert out.read_bytes()[:4] == b"GGUF" and exported.bytes == out.stat().st_size
        assert f"exporting GGUF (q8_0) to {out} (between two candidates)" in notices(app)
        line = next(n for n in notices(app) if n.startswith("exported to"))
        assert line.startswith(f"exported to {out}: GGUF (q8_0), ") and "llama-cli -m" in line
        assert app.state.activity is None and not (session / session_files.EXPORT).exists()
        await pilot.press("q")
        await pilot.press("y")
    assert app.engine.join(60)


async def test_a_gguf_export_the_engine_refuses_is_a_notice_and_the_run_goes_on(
    tiny_model_dir, calibration_file, tmp_path
):
    app = make_app(tiny_model_dir("qwen3"), calibration_file, tmp_path)
    app.engine.send(commands.Pause())  # paused once loaded
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.state.state == "paused")
        screen = await open_export(pilot, app)
        await choose_gguf(pilot, screen)
        path_field(screen).value = str(tmp_path / "qwen3.gguf")
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(n.startswith("export failed") for n in notices(app)))
        (line,) = [n for n in notices(app) if n.startswith("export failed")]
        assert "a qwen3 model cannot be written as GGUF" in line and "\n" not in line
        assert app.state.exported is None and not (tmp_path / "qwen3.gguf").exists()
        assert app.state.error is None and app.state.activity is None
        await pilot.press("space")  # the run goes on to its end
        await wait_until(pilot, lambda: app.state.finished is not None)
        assert app.state.finished == "done" and steps(app)


async def test_an_attached_app_exports_gguf_over_the_socket(
    tiny_model_dir, calibration_file, tmp_path
):
    engine, server, remote = served_run(tiny_model_dir("llama"), calibration_file, tmp_path)
    app = MptuiApp(
        remote, gpu_reader=NoGpu(), attached_to=remote.peer,
        export_dir=Path(remote.welcome.export_dir), session_dir=Path(remote.welcome.session),
    )  # fmt: skip
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.state.finished == "done")
            screen = await open_export(pilot, app)
            await choose_gguf(pilot, screen)
            out = tmp_path / "attached.gguf"
            path_field(screen).value = str(out)
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.state.exported is not None)
            assert app.state.exported.format == "gguf" and app.state.exported.gguf_type == "f16"
            assert out.read_bytes()[:4] == b"GGUF"
            await pilot.press("q")
            await wait_until(pilot, lambda: not app.is_running)
        remote.close()
        assert engine.join(timeout=30) and engine.result.reason == "done"
    finally:
        remote.close()
        server.close()


@pytest.mark.parametrize("given", ["folder", "file.gguf"])
async def test_the_dialog_opens_on_the_format_of_export(given, tmp_path):
    """``mptui MODEL --export out.gguf --gguf-type q8_0``: x offers that file, as GGUF of that
    type; a folder, as before."""
    engine = StillEngine()
    app = MptuiApp(
        engine, replay=fixed_run_events(), gpu_reader=NoGpu(), export_dir=tmp_path / given,
        session_dir=tmp_path / "session", gguf_type="q8_0",
    )  # fmt: skip
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_export(pilot, app)
        assert path_field(screen).value == str(tmp_path / given)
        assert screen.format == ("gguf" if given.endswith(".gguf") else "safetensors")
        await pilot.press("enter")
        await wait_until(pilot, lambda: engine.received)
        (sent,) = engine.received
        assert sent.format == screen.format and sent.path == str(tmp_path / given)
        assert sent.gguf_type == ("q8_0" if sent.format == "gguf" else None)
