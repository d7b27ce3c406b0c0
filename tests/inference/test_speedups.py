"""The prefilled decoder cache reaches `generate` under the keyword the installed transformers names
(the parity tests in test_engine.py show it is used: they would fail if it were not accepted)."""

from __future__ import annotations

from typing import Any

import pytest

from blipq.inference.engine import CaptionEngine
from blipq.inference.speedups import cache_keyword


def test_a_decoder_from_before_the_rename_gets_past_key_values(
    engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forward_before_the_rename(input_ids: Any = None, past_key_values: Any = None, **kwargs: Any) -> None:
        """The keyword transformers 5.17 and earlier use."""

    monkeypatch.setattr(engine.model.text_decoder, "forward", forward_before_the_rename)
    assert cache_keyword(engine.model) == "past_key_values"
