"""Shared fixtures: golden files and a TVM llvm runner."""

from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/* from the current output",
    )


@pytest.fixture
def golden(request):
    """Compare text with tests/golden/<name>; `pytest --update-golden` refreshes the file."""

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"missing golden file {path}: run pytest --update-golden"
        assert text == path.read_text(), f"{name} changed: inspect, then pytest --update-golden"

    return check
