"""The real ``mptui --demo`` in tmux: keys in, screen out, as a user over SSH sees it."""

from __future__ import annotations

from tmux_session import MPTUI, Tmux, wait_gone


def test_demo_in_tmux(tmp_path):
    tmux = Tmux(tmp_path)
    out, session = tmp_path / "out", tmp_path / "session"
    command = f"cd {tmp_path} && TERM=xterm-256color {MPTUI} --demo --out {out} --session {session}"
    tmux.open(command, 100, 30)
    try:
        screen = tmux.wait_for("Removed per layer")
        assert "Candidates" in screen and "Perplexity" in screen and "Memory" in screen
        tmux.wait_for("RUNNING")
        tmux.wait_for("ppl")
        tmux.run("send-keys", "-t", "demo", "space")
        tmux.wait_for("PAUSED")
        tmux.wait_for("no GPU")  # the memory pane, once the start-up notices have faded
        tmux.run("send-keys", "-t", "demo", "?")
        tmux.wait_for("pause / resume")
        tmux.run("send-keys", "-t", "demo", "Escape")
        wait_gone(tmux, "pause / resume")  # a key right after Escape would read as alt+key
        tmux.quit()
        assert (out / "plan.json").exists()
        assert (session / "mptui.log").exists()
        assert (session / "settings.json").exists()
    finally:
        tmux.kill()
