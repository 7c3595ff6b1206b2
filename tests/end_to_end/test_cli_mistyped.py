"""A mistyped subcommand or ``--method`` is one line with the closest name, exit status 2; a
model id or folder in the same place is still a model."""

from __future__ import annotations

import pytest

from mptui.cli import main


def error_of(argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("word", "meant"),
    [("exprot", "export"), ("evl", "eval"), ("comapre", "compare"), ("atach", "attach")],
)
def test_a_mistyped_subcommand_names_the_closest(word, meant, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = error_of([word, "S"], capsys)
    assert err == f"mptui: error: unknown command '{word}'; did you mean '{meant}'?"


def test_a_folder_named_like_a_subcommand_is_a_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exprot").mkdir()
    err = error_of(["exprot", "--method", "nope"], capsys)
    assert "unknown command" not in err and "--method 'nope'" in err


@pytest.mark.parametrize("model", ["gpt2", "acme/exprot", "./evl", "llama"])
def test_a_model_id_far_from_a_subcommand_is_no_command(model, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = error_of([model, "--method", "nope"], capsys)  # stops at the method, before loading
    assert "unknown command" not in err and "--method 'nope'" in err


def test_a_mistyped_method_names_the_closest(capsys):
    err = error_of(["some/model", "--method", "sleeb"], capsys)
    assert err == (
        "mptui: error: --method 'sleeb' must be one of multipruner, blockpruner, sleb, "
        "shortgpt; did you mean 'sleb'?"
    )
    err = error_of(["some/model", "--method", "blokpruner"], capsys)
    assert err.endswith("did you mean 'blockpruner'?")
    err = error_of(["some/model", "--method", "zzz"], capsys)
    assert err.endswith("must be one of multipruner, blockpruner, sleb, shortgpt")
