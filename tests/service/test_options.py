"""The request options the gateway validates are the ones the engine accepts."""

from __future__ import annotations

import typing

from model.losses import SIMILARITIES
from riir import options
from service.schemas import PairParams
from worker import engine


def test_gateway_and_engine_share_the_options() -> None:
    assert options.SIMILARITIES == SIMILARITIES
    assert options.INITS == engine.INITS and options.MAX_STEPS == engine.MAX_STEPS
    fields = PairParams.model_fields
    assert typing.get_args(fields["init"].annotation) == options.INITS
    steps = {type(m).__name__: m for m in fields["steps"].metadata}
    assert steps["Le"].le == options.MAX_STEPS
