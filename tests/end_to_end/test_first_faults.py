"""No traceback, ever (issue 29), where a new user starts: a hub id. A model that is not on the
hub, or any hub id with no network, is one line and exit status 2 from the real ``mptui``
command, with ``HF_HUB_OFFLINE`` set (nothing asked of the network) and unset (the hub asked
once, without transformers' five retries over half a minute). A model in the local Hugging Face
cache loads from it with no network at all.

No test here reaches the internet: the hub is a local port that refuses connections (a bound
socket that does not listen), or a local server answering as the hub does for a missing model.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

MPTUI = Path(sys.executable).parent / "mptui"
MISSING = "mptui-tests/no-such-model"


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` where nothing listens: every connection is refused at once,
    as a network without the hub is (and the port stays ours while the test runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class _MissingRepo(http.server.BaseHTTPRequestHandler):
    """What the hub answers for a repository that does not exist (or is private)."""

    def do_HEAD(self) -> None:
        self.send_response(401)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def hub_without_the_model() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MissingRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def environment(tmp_path: Path, offline: bool, endpoint: str | None = None) -> dict[str, str]:
    """This suite's environment with an empty hub cache, offline or online at ``endpoint``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    return env


def command(kind: str, model: str, calibration: Path, tmp_path: Path) -> list[str]:
    if kind == "eval":
        return [str(MPTUI), "eval", model, "--perplexity", str(calibration), "--seqlen", "32"]
    return [str(MPTUI), model, "--headless", "--calibration", str(calibration), "--seqlen", "32",
            "--nsamples", "2", "--session", str(tmp_path / "session")]  # fmt: skip


def refused(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """Exit status 2 and exactly one line on stderr, no session started. Returns the line."""
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no "Retrying in 8s" lines, no traceback
    assert not (tmp_path / "session").exists()
    return lines[0]


@pytest.mark.parametrize("kind", ["run", "eval"])
def test_a_hub_id_offline_that_is_not_in_the_cache(kind, calibration_file, tmp_path):
    line = refused(
        command(kind, MISSING, calibration_file, tmp_path), environment(tmp_path, True), tmp_path
    )
    assert line == (
        f"mptui: error: could not load model '{MISSING}': it is not a local folder nor in the "
        "Hugging Face cache, and HF_HUB_OFFLINE is set (download it where the hub is "
        "reachable, or give its folder)"
    )


@pytest.mark.parametrize("kind", ["run", "eval"])
def test_a_hub_id_with_no_network(kind, refusing_endpoint, calibration_file, tmp_path):
    env = environment(tmp_path, False, refusing_endpoint)
    line = refused(command(kind, MISSING, calibration_file, tmp_path), env, tmp_path)
    assert line.startswith(
        f"mptui: error: could not load model '{MISSING}': its files are not all in the Hugging "
        f"Face cache and the hub ({refusing_endpoint}) cannot be reached (ConnectError: "
    )


def test_a_hub_id_the_hub_does_not_have(hub_without_the_model, calibration_file, tmp_path):
    env = environment(tmp_path, False, hub_without_the_model)
    line = refused(command("run", MISSING, calibration_file, tmp_path), env, tmp_path)
    assert line == (
        f"mptui: error: could not load model '{MISSING}': no such model on the Hugging Face hub "
        "(if it is private: hf auth login)"
    )


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online-no-network"])
def test_a_cached_hub_id_needs_no_network(
    offline, refusing_endpoint, tiny_model_dir, calibration_file, tmp_path
):  # fmt: skip
    """The cache is looked at first: with the hub unreachable and HF_HUB_OFFLINE unset, the
    model still loads from it, without a request (transformers' peft look-up included)."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny_model_dir("llama"), repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = environment(tmp_path, offline, refusing_endpoint)
    args = command("run", "acme/tiny-llama", calibration_file, tmp_path)
    result = subprocess.run(
        [*args, "--target-ratio", "0.2", "--mlp-group", "40"], capture_output=True, text=True,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "thrown while requesting" not in result.stderr and "Retry" not in result.stderr
    assert "finished (done)" in result.stdout


def test_a_cached_config_without_its_weights(refusing_endpoint, tiny_model_dir, tmp_path):
    """A download cut after config.json: offline it is one line, online it asks the hub."""
    repo = tmp_path / "hub" / "models--acme--half"
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    shutil.copy(tiny_model_dir("llama") / "config.json", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    text = tmp_path / "text.txt"
    text.write_text("a few words of text to score\n" * 20)
    args = command("eval", "acme/half", text, tmp_path)
    offline = refused(args, environment(tmp_path, True), tmp_path)
    assert offline.startswith(
        "mptui: error: could not load model 'acme/half': its files are not all in the Hugging "
        "Face cache, and HF_HUB_OFFLINE is set ("
    )
    online = refused(args, environment(tmp_path, False, refusing_endpoint), tmp_path)
    assert online.startswith(
        "mptui: error: could not load model 'acme/half': its files are not all in the Hugging "
        f"Face cache and the hub ({refusing_endpoint}) cannot be reached (ConnectError: "
    )


def test_a_session_file_replaced_by_a_folder_from_the_real_command(
    tiny_model_dir, calibration_file, tmp_path
):  # fmt: skip
    """The real entry point, as a user meets it (the cases are in test_faults_eval_export)."""
    from tests.conftest import headless_session

    session = headless_session(tiny_model_dir("llama"), calibration_file, tmp_path / "s")
    plan = session / "plan.json"
    plan.unlink()
    plan.mkdir()
    result = subprocess.run(
        [str(MPTUI), "--resume", str(session), "--headless"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"mptui: error: {plan} is a directory, where the session keeps its plan file\n"
    )
    assert sorted(p.name for p in plan.iterdir()) == []
