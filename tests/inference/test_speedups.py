"""The prefilled decoder cache reaches `generate` under the keyword the installed transformers names
(the parity tests in test_engine.py show it is used: they would fail if it were not accepted)."""

from __future__ import annotations

from typing import Any

import pytest

from inference.engine import CaptionEngine
from inference.speedups import cache_argument, prefilled_cache
from tests.helpers import varied_images


def test_a_decoder_from_before_the_rename_gets_past_key_values(
    engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_embeds = engine.model.vision_model(pixel_values=engine.prepare(varied_images()[0])[None])[0]
    cache = prefilled_cache(engine.model, image_embeds, num_beams=3)

    def forward_before_the_rename(input_ids: Any = None, past_key_values: Any = None, **kwargs: Any) -> None:
        """The keyword transformers 5.17 and earlier use."""

    monkeypatch.setattr(engine.model.text_decoder, "forward", forward_before_the_rename)
    assert cache_argument(engine.model, cache) == {"past_key_values": cache}
