"""The options a registration request may set, shared by every entry point.

Torch-free: the gateway validates requests with these before anything is queued, and the
worker's engine checks them again with the same values, so the two can never disagree.
"""

from __future__ import annotations

from typing import Literal, get_args

MAX_STEPS = 50  # recurrent steps T a request may ask for (the paper trains with T = 6)

Init = Literal["physical", "center"]
# physical: trust the headers' world coordinates; center: first align the image centres.
INITS: tuple[str, ...] = get_args(Init)

Similarity = Literal["mse", "ncc", "nmi"]
# The inner similarity L_inner whose gradient the RIIR cell sees (model.losses.SIMILARITIES).
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
