"""The decoder's fixed-shape layout (CUDA's): slot capacities, slot sets reused and bounded, and the eager
step where a CUDA graph cannot be captured. Its captions against transformers' run in test_search.py (every
parity test there runs in both layouts) and, with CUDA graphs, in test_cuda.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from blipq.contract.options import CaptionOptions
from blipq.inference.engine import CaptionEngine
from blipq.inference.fixed_slots import IDLE_SETS, FixedSlotDecoder, capacity_for
from tests.helpers import varied_images
from tests.inference.test_engine import decoded_inputs


def test_fixed_slot_capacities_are_few_shapes_with_little_waste() -> None:
    assert [capacity_for(images) for images in (1, 2, 3, 5, 8, 9, 16, 17, 48, 61)] == [
        1,
        2,
        4,
        8,
        8,
        16,
        16,
        24,
        48,
        64,
    ]


def test_fixed_slot_sets_are_reused_by_later_cohorts_and_bounded(tiny_checkpoint: Path) -> None:
    engine = CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32", fixed_slots=True)
    prepared = [engine.prepare(image) for image in decoded_inputs() + varied_images()]
    decoder = engine._text_decoder
    assert isinstance(decoder, FixedSlotDecoder)
    options = CaptionOptions()
    first = engine.generate(prepared[:5], options)
    [[slots]] = decoder._idle.values()
    assert (slots.images, slots.beams) == (8, 3)
    engine.generate(prepared[5:10], options)
    assert [list(map(id, sets)) for sets in decoder._idle.values()] == [[id(slots)]]  # the same set, reused
    assert engine.generate(prepared[:5], options) == first  # a reused set's leftovers change nothing
    for max_length in range(8, 8 + IDLE_SETS + 3):
        engine.generate(prepared[:1], CaptionOptions(max_length=max_length))
    assert sum(len(sets) for sets in decoder._idle.values()) == IDLE_SETS


def test_a_step_that_cannot_be_captured_as_a_cuda_graph_runs_eagerly(
    tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Graphs asked for where CUDA cannot capture (here: no CUDA at all) cost a log line, not the captions."""
    engine = CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32", fixed_slots=True)
    reference = CaptionEngine(engine.model, engine.processor, engine.device, engine.dtype, decoder="transformers")
    engine._text_decoder = FixedSlotDecoder(engine.model, graphs=True)
    prepared = [engine.prepare(image) for image in varied_images()]
    assert engine.generate(prepared, CaptionOptions()) == reference.generate(prepared, CaptionOptions())
    assert "runs eagerly" in caplog.text
