"""Fixtures of the fault-injection tests (the processes themselves: ``stack.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import Stack, make_models


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models(tmp_path_factory.mktemp("reliability-models"))


@pytest.fixture
def stack_factory(tmp_path: Path, models: Path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**settings: Any) -> Stack:
        stack = Stack(tmp_path / f"stack{len(made)}", models, **settings)
        made.append(stack)
        stack.start_redis()
        return stack

    yield make
    for stack in made:
        stack.stop()
