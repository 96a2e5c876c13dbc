"""The record's phase timings: a phase nested in another is not counted twice."""

from __future__ import annotations

import pytest

from lconnx.commands import record


class Clock:
    """perf_counter stand-in that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(record.time, "perf_counter", fake)
    return fake


def test_a_nested_phase_is_taken_out_of_its_outer_phase(clock):
    timings = record.Timings(started=clock.now)
    with timings.phase("load"):
        clock.now += 1.0
    with timings.phase("save"):
        clock.now += 2.0
        with timings.phase("verify"):  # optimize verifies the temp file inside the save
            clock.now += 5.0
        clock.now += 0.5
    assert timings.phases == {"load": 1.0, "save": 2.5, "verify": 5.0}
    assert timings.to_dict()["total"] == pytest.approx(sum(timings.phases.values()))


def test_a_phase_left_by_an_exception_still_counts_and_unwinds(clock):
    timings = record.Timings()
    with pytest.raises(RuntimeError), timings.phase("save"):
        clock.now += 1.0
        with timings.phase("verify"):
            clock.now += 3.0
            raise RuntimeError("bound broken")
    with timings.phase("report"):
        clock.now += 0.25
    assert timings.phases == {"save": 1.0, "verify": 3.0, "report": 0.25}


def test_repeated_phases_add_up(clock):
    timings = record.Timings()
    for _ in range(3):
        with timings.phase("pass"):
            clock.now += 0.5
    assert timings.phases == {"pass": 1.5}
