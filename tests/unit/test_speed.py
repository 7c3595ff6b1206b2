"""``mptui.engine.output.speed``'s pure parts: medians per phase, and :func:`alternating`'s turns
(the
order a benchmark measures its subjects in), with trivial measurements in place of models."""

from __future__ import annotations

import pytest

from mptui.engine.output.speed import (
    Speed,
    alternating,
    llama_cpp_speed,
    median_speed,
    transformers_speed,
)


def test_median_speed_takes_each_phase_on_its_own():
    speeds = [Speed(10.0, 3.0), Speed(30.0, 1.0), Speed(20.0, 2.0)]
    assert median_speed(speeds) == Speed(20.0, 2.0)
    assert median_speed([Speed(1.0, 4.0), Speed(3.0, 2.0)]) == Speed(2.0, 3.0)
    with pytest.raises(ValueError, match="no measurement"):
        median_speed([])


def test_alternating_takes_turns_and_keeps_each_subjects_median():
    calls: list[str] = []
    values = {"dense": iter([5.0, 1.0, 3.0, 4.0]), "pruned": iter([9.0, 7.0, 8.0, 100.0])}

    def measure(name: str):
        def taken() -> Speed:
            calls.append(name)
            value = next(values[name])
            return Speed(value * 10, value)

        return taken

    result = alternating({"dense": measure("dense"), "pruned": measure("pruned")}, rounds=3)
    # Round r starts at subject r: neither is always measured first.
    assert calls == ["dense", "pruned", "pruned", "dense", "dense", "pruned"]
    assert list(result) == ["dense", "pruned"]
    assert result == {"dense": Speed(30.0, 3.0), "pruned": Speed(80.0, 8.0)}


def test_alternating_rotates_through_three_subjects():
    calls: list[str] = []
    measures = {name: (lambda name=name: calls.append(name) or Speed(1.0, 1.0)) for name in "abc"}
    alternating(measures, rounds=4)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"


def test_alternating_needs_a_round():
    with pytest.raises(ValueError, match="rounds"):
        alternating({"a": lambda: Speed(1.0, 1.0)}, rounds=0)
    assert alternating({}, rounds=2) == {}


@pytest.mark.parametrize("measure", [llama_cpp_speed, transformers_speed])
@pytest.mark.parametrize(
    "prompt, new_tokens, repeats", [([], 4, 1), ([1, 2], 0, 1), ([1, 2], 4, 0)]
)
def test_nothing_to_time_is_refused_before_anything_loads(measure, prompt, new_tokens, repeats):
    with pytest.raises(ValueError):
        measure(None, prompt, new_tokens, repeats=repeats)
