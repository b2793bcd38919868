"""Differential fuzzing: random workloads, tile configs and hardware, lowered and simulated,
against torch in float64 (the cases and the check are in tests/fuzz_cases.py).

The CI profile is short and deterministic (40 examples, derandomized, no example database);
`CONVADD_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py` runs longer, and `benchmarks/fuzz.py`
runs thousands of cases from numpy's RNG and prints a summary table.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.fuzz_cases import Case, check_case, draw_case
from tvm_convadd import TileConfig, Workload
from tvm_convadd.schedules.workload import standard_epilogue
from tvm_convadd.target.hardware import load_config

CI_SETTINGS = settings(
    max_examples=int(os.environ.get("CONVADD_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class _Draw:
    """The Chooser of tests/fuzz_cases.py over Hypothesis's `draw` (so failures shrink)."""

    def __init__(self, draw) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def boolean(self) -> bool:
        return self.draw(st.booleans())


@st.composite
def cases(draw) -> Case:
    return draw_case(_Draw(draw))


@CI_SETTINGS
@given(case=cases())
def test_lowered_program_matches_torch(case):
    """Output equals torch, timing-only cycles equal functional cycles, and the only errors
    are the documented ones: TileConfigError (N too big), BufferOverflowError, and
    UnsupportedWorkloadError."""
    note(case.repro())
    check_case(case)


# Edge cases the generator reaches only sometimes, run every time.
EDGE_CASES = {
    # the only output row's window lies wholly in the top padding (lowering crashed on it)
    "window_only_padding": (
        Workload(1, 1, 1, 1, 1, 1, 1, stride=(2, 1), padding=(1, 0, 0, 0)),
        TileConfig(1),
    ),
    "all_ones": (Workload(1, 1, 1, 1, 1, 1, 1), TileConfig(1, "height", "none")),
    "kernel_is_padded_input": (
        Workload(
            2,
            3,
            3,
            2,
            5,
            5,
            5,
            stride=(3, 2),
            padding=(1, 2, 1, 1),
            epilogue=standard_epilogue(bias=True),
        ),
        TileConfig(1, "channel", "vthread"),
    ),
    "ragged_last_tile_asymmetric_pad": (
        Workload(
            1,
            7,
            11,
            13,
            5,
            3,
            2,
            stride=(2, 3),
            padding=(2, 0, 1, 2),
            epilogue=standard_epilogue(relu=True),
        ),
        TileConfig(4, "height", "software"),
    ),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_case_matches_torch(name):
    workload, config = EDGE_CASES[name]
    assert check_case(Case(workload, config, load_config("default"), seed=0)) is None
