"""``GET /models``: the shipped models a client may name."""

from __future__ import annotations

from fastapi import APIRouter

from conventions import catalog
from service.errors import problem_responses
from service.schemas import ModelCard

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=list[ModelCard],
    responses=problem_responses(401),
    summary="The shipped models and their cards",
)
def list_models() -> list[ModelCard]:
    return [ModelCard.model_validate(card) for card in catalog.list_models()]
