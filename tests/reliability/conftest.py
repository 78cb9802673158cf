"""Fixtures of the reliability suite: the small sample area and one warmed-up zygote process
(``benchmarks.reliability.Zygote``) that forks the child runs the tests kill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.reliability import Zygote, zygote
from tasks.sample_area import generate_sample_area


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability-sample") / "sample"
    generate_sample_area(root, size="small", seed=3)
    return root


@pytest.fixture(scope="session")
def zyg() -> Iterator[Zygote]:
    with zygote() as z:
        yield z
