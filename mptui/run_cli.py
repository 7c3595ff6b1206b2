"""``mptui MODEL``: from parsed arguments to a run, headless or in the app, over the same
request (alone, as the leader of workers, or launching them).

Bad input is one line on stderr and exit status 2, before anything long starts. What the other
commands share with this one lives in :mod:`.places` and :mod:`.terminal`, so none of them
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .flags import cli_words
from .places import calibration_cache_dir, default_session_dir
from .terminal import quiet_libraries, terminal_kept_logs_to
from .torchrun_env import launched_by_torchrun, restarted

if TYPE_CHECKING:  # the engine itself is imported when a run starts, so --help stays instant
    from mptui.engine.api import RecoverySettings, RunRequest, SessionFolder


def build_request(args: argparse.Namespace):
    """The engine request for ``args`` and ``--out`` (or None); raises the engine's BadInput."""
    from mptui.engine.api import (
        DEFAULT_NSAMPLES,
        DEFAULT_SEQLEN,
        DEFAULT_TARGET_RATIO,
        FAITHFUL_CALIBRATION,
        CalibrationSpec,
        PruneSettings,
        RunRequest,
    )

    settings = PruneSettings.with_distribution(
        args.target_ratio if args.target_ratio is not None else DEFAULT_TARGET_RATIO,
        args.distribution,
        args.order,
        calibration=CalibrationSpec(
            source=args.calibration or (FAITHFUL_CALIBRATION if args.faithful else ""),
            nsamples=args.nsamples if args.nsamples is not None else DEFAULT_NSAMPLES,
            seqlen=args.seqlen if args.seqlen is not None else DEFAULT_SEQLEN,
            seed=args.seed,
            text_field=args.text_field,
        ),
        batch_size=args.batch_size,
        mlp_group=args.mlp_group,
        attn_group=args.attn_group,
        block_count=args.block_count,
        prefix_cache=not args.no_prefix_cache,
        compile=args.compile,
        fast=args.fast,
        fast_margin=args.fast_margin,
        fast_tolerance=args.fast_tolerance,
        faithful=args.faithful,
        guided=args.guided,
        method=args.method,
    )
    out_dir = Path(args.out) if args.out else None
    request = RunRequest(
        model=args.model,
        settings=settings,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        cache_dir=calibration_cache_dir(),
    )
    return request, out_dir


@dataclasses.dataclass
class OpenedSession:
    """A run about to start: its request, its locked folder and where its outputs go."""

    request: RunRequest
    folder: SessionFolder
    out_dir: Path
    export_dir: Path | None
    recovery: RecoverySettings | None = None  # what r recovers with (--recover-data)


def open_session(args: argparse.Namespace, recovery=None) -> OpenedSession:
    """A new session, or one to resume with everything the user decided in it; ``recovery``:
    the recovery ``r`` starts (kept in the session's settings; a resume keeps its own unless
    given one)."""
    from mptui.engine.api import SessionFolder, preflight

    export = Path(args.export) if getattr(args, "export", None) else None
    if args.resume:
        opened = reopen_session(
            Path(args.resume), device=args.device, device_map=args.device_map,
            out=Path(args.out) if args.out else None, export=export,
        )  # fmt: skip
        opened.recovery = recovery or opened.recovery
    else:
        request, out_dir = build_request(args)
        folder = SessionFolder(
            Path(args.session) if args.session else default_session_dir(args.model)
        )
        folder.refuse_if_taken()
        request = dataclasses.replace(request, order_file=folder.order_file)
        opened = OpenedSession(request, folder, out_dir or folder.path, export, recovery)
    preflight(opened.request)
    if getattr(args, "eval_text", None) or getattr(args, "eval_include_path", None):
        app_eval_request(args, opened.request.settings.calibration.seqlen).check()
    if opened.export_dir is not None:
        check_export(opened.export_dir, opened.request.model)
    if not args.resume:
        opened.folder.lock()
        opened.folder.write_request(opened.request, out=out_dir, export=export, recovery=recovery)
    return opened


def reopen_session(
    path: Path,
    *,
    device: str | None = None,
    device_map: str | None = None,
    dtype: str | None = None,
    out: Path | None = None,
    export: Path | None = None,
) -> OpenedSession:
    """A session to continue, locked, with everything the user decided in it; ``device``,
    ``device_map`` or ``dtype``: load otherwise than it was (its first device failed, say). A
    damaged session is one line, and no file of it changes. A recovery it had started loads as
    that recovery did, unless told otherwise."""
    from mptui.engine.api import BadInput, RecoveryFolder, SessionFolder, check_session
    from mptui.engine.api import session_files as files

    folder = SessionFolder(path)
    folder.check_files()  # a file, or a session file replaced by a folder: one line
    if not (folder.path / files.SETTINGS).is_file():
        raise BadInput(f"'{folder.path}' is not an mptui session (no settings.json)")
    folder.lock(claim=False)
    try:
        saved = folder.read_run(cache_dir=calibration_cache_dir())
        check_session(folder, saved)  # a damaged session: one line, and no file changed
        recovery = RecoveryFolder(folder.path)
        loaded_as = recovery.read_settings()[1] if recovery.started else None
    except BaseException:
        folder.unlock()
        raise
    folder.claim()
    request = saved.request
    if loaded_as is not None:
        request = dataclasses.replace(
            request,
            dtype=loaded_as.dtype or request.dtype,
            device=loaded_as.device or request.device,
        )
    if dtype is not None:
        request = dataclasses.replace(request, dtype=dtype)
    if device or device_map:  # on another device (the first one failed, say)
        request = dataclasses.replace(request, device=device, device_map=device_map)
    request = dataclasses.replace(request, order_file=folder.order_file)
    return OpenedSession(
        request, folder, out or saved.out or folder.path, export or saved.export, saved.recovery
    )


def check_export(export: Path, model: str) -> None:
    """``--export``: a folder for transformers, or a ``.gguf`` file of a family llama.cpp runs;
    refused now, not after the search."""
    from mptui.engine.api import (
        check_destination,
        check_gguf_architecture,
        check_gguf_destination,
        load_config,
    )

    if export.suffix.lower() != ".gguf":
        check_destination(export)
        return
    check_gguf_destination(export)
    for architecture in getattr(load_config(model), "architectures", None) or ():
        check_gguf_architecture(architecture)


def app_eval_request(args: argparse.Namespace, seqlen: int):
    """What the app's ``e`` evaluates, from the ``--eval-*`` options."""
    from mptui.engine.api import EvalRequest

    return EvalRequest.from_options(
        args.eval_tasks, args.eval_text, seqlen, include_path=args.eval_include_path,
        limit=args.eval_limit,
    )  # fmt: skip


def resumed_recovery(folder: Path):
    """The settings of the recovery a resumed session had started (None when none had)."""
    from mptui.engine.api import RecoveryFolder

    recovery = RecoveryFolder(folder)
    return recovery.read_settings()[0] if recovery.started else None


def recover_now(args: argparse.Namespace):
    """``mptui EXPORT --recover``: the recovery to run straight after loading (no search)."""
    from mptui.engine.api import BadInput, RecoverySource

    if not getattr(args, "recover", False):
        return None
    if not args.model or RecoverySource.find(Path(args.model)).is_session:
        raise BadInput("--recover works on an export folder (give its path as MODEL)")
    settings = app_recovery(args)
    if settings is None:
        raise BadInput("--recover needs --recover-data FILE (what to fine-tune on)")
    args.calibration = args.calibration or settings.data  # the load scores the model on it
    return settings


def app_recovery(args: argparse.Namespace):
    """What the app's ``r`` runs: ``--recover-data`` with the reference's settings, or the
    demo's short recovery with ``--demo``; None without data."""
    from mptui.engine.api import RecoverySettings

    if not getattr(args, "recover_data", None):
        return None
    if getattr(args, "demo", False):
        from mptui.demo.recovery import demo_recovery_settings

        return demo_recovery_settings(args.recover_data)
    return RecoverySettings(data=args.recover_data)


def check_before_loading(args: argparse.Namespace) -> None:
    """What a new run's arguments can be refused for without torch: the settings (ratio,
    distribution, order, group sizes), a model path that does not exist, a calibration file
    that is missing or has no text, and what the model's own files settle (architecture,
    --seqlen, group sizes against its widths, a calibration file too short for one chunk).
    Raises the engine's error; what only the loaded model settles comes with the engine."""
    from mptui.engine.api import check_model_path, check_with_model_files, load_documents

    if args.resume or getattr(args, "recover", False):
        return  # the session's settings, or the export's, are read with the engine
    request, _ = build_request(args)
    check_model_path(args.model)
    documents = None  # a dataset is read by the run: it may need the network or a big download
    if args.calibration and Path(args.calibration).suffix.lower() in (".txt", ".jsonl"):
        documents = load_documents(args.calibration, args.text_field)  # a cheap read, again later
    check_with_model_files(request, documents)


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    from mptui.engine.api import BadInput, EngineError

    from . import workers

    if args.fast and (args.workers or launched_by_torchrun()):
        if os.environ.get("RANK", "0") == "0":
            print(
                "mptui: error: --fast runs on one process for now; drop --fast or --workers",
                file=sys.stderr,
            )
        return 2
    try:
        check_before_loading(args)
    except EngineError as error:  # every rank stops; rank 0 says why
        if os.environ.get("RANK", "0") == "0":
            print(f"mptui: error: {cli_words(error)}", file=sys.stderr)
        return 2
    if args.workers and not launched_by_torchrun():
        shortage = workers.gpu_shortage(args.workers, args.gpus_per_worker)
        if shortage is not None:
            print(f"mptui: error: {shortage}", file=sys.stderr)
            return 2
        if not args.headless:
            return workers.launch_with_app(args, argv)
        return workers.launch(args, argv)
    team = None
    if launched_by_torchrun():
        if not args.headless:
            if os.environ.get("RANK") == "0":
                print(
                    "mptui: error: under torchrun, pass --headless; watch and steer the run "
                    "with mptui attach SESSION",
                    file=sys.stderr,
                )
            return 2
        try:
            team = workers.join_team(args)
        except BadInput as error:  # this node has fewer GPUs than --gpus-per-worker asks
            print(f"mptui: error: {cli_words(error)}", file=sys.stderr)
            return 2
        if not team.is_leader:
            return workers.follow(team, args)
        if restarted() and args.session and not args.resume:
            args.resume = args.session  # the launcher restarted us: continue the session
    return lead(args, team)


def lead(args: argparse.Namespace, team) -> int:
    """The run this process owns: alone, or as rank 0 of ``team``."""
    from mptui.engine.api import EngineError

    from .headless import Outputs, run_headless

    quiet_libraries()
    try:
        start_recovery = recover_now(args)
        opened = open_session(args, recovery=start_recovery or app_recovery(args))
    except EngineError as error:
        print(f"mptui: error: {cli_words(error)}", file=sys.stderr)
        if team is not None:
            team.broadcast(None)  # the followers leave too
        return 2
    if args.headless and opened.request.settings.guided:
        print("mptui: note: guided mode is off in a headless run", file=sys.stderr)
        settings = dataclasses.replace(opened.request.settings, guided=False)
        opened.request = dataclasses.replace(opened.request, settings=settings)
    if team is not None:
        from mptui.engine.api import on_replica_device

        team.broadcast(opened.request)
        opened.request = on_replica_device(opened.request, team, args.gpus_per_worker)
    engine = session_engine(opened, recover=start_recovery, linger=not args.headless, team=team)
    try:
        if not args.headless:
            return run_app(engine, opened, args)
        return run_headless(
            engine, opened.folder.path, opened.out_dir, listen=args.listen,
            eval_request=app_eval_request(args, opened.request.settings.calibration.seqlen),
            recovery=opened.recovery,
            outputs=Outputs(opened.export_dir, getattr(args, "gguf_type", None)),
        )  # fmt: skip
    finally:
        opened.folder.unlock()


def session_engine(opened: OpenedSession, *, recover=None, linger: bool = False, team=None):
    """The engine of ``opened``, recording into its folder. It goes straight to a recovery once
    loaded when the session had started one (it continues it) or when ``recover`` is given."""
    from mptui.engine.api import Engine, SessionRecorder

    folder = opened.folder
    plan_dirs = [folder.path] + ([opened.out_dir] if opened.out_dir != folder.path else [])
    engine = Engine(
        opened.request, linger=linger, journal=folder, plan_dirs=plan_dirs,
        session_dir=folder.path, recover=resumed_recovery(folder.path) or recover, team=team,
    )  # fmt: skip
    engine.subscribe(SessionRecorder(folder, engine.plan))
    return engine


def run_app(engine, opened: OpenedSession, args: argparse.Namespace) -> int:
    """The app over the engine. However the app ends (quit, the terminal gone, a crash), the
    engine is stopped and joined before the session is unlocked, so its summary is written and
    ``--resume`` works at once."""
    from mptui.app.app import MptuiApp
    from mptui.engine.api import commands, session_files

    from .headless import stop_on_signals

    session_dir = opened.folder.path
    eval_request = app_eval_request(args, opened.request.settings.calibration.seqlen)
    export_dir = opened.export_dir or session_dir / session_files.EXPORT
    stop_on_signals(engine, signal.SIGHUP, signal.SIGTERM)  # until the app takes them over
    try:
        with terminal_kept_logs_to(session_dir / session_files.LOG):
            MptuiApp(
                engine, theme_name=args.theme, eval_request=eval_request, export_dir=export_dir,
                gguf_type=getattr(args, "gguf_type", None), recovery=opened.recovery,
                session_dir=session_dir,
            ).run()  # fmt: skip
    finally:
        engine.send(commands.Stop())
        engine.join()
    with contextlib.suppress(OSError):  # the terminal may be gone
        print(
            f"session {session_dir} (plan.json, journal, log); "
            f"resume with mptui --resume {session_dir}",
            flush=True,
        )
    return 0
