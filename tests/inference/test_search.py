"""The engine's own search (`blipq.inference.search` over `StaticTextDecoder`) against transformers' `generate`
on the same weights: the parity tests in test_engine.py compare the default engine with transformers'
documented use; here the two decoders of one engine are compared over the generation-config rules the
search implements, and a config it does not implement falls back to transformers.

The random tiny model almost never predicts the end token, so every beam would run to max_length and the
rules about finished beams (length penalty, early stopping) would decide nothing. The engines here get a
raised end-token bias, so captions end at varied lengths (a test checks they do)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from blipq.contract.options import CaptionOptions
from blipq.inference.engine import CaptionEngine
from blipq.inference.fixed_slots import FixedSlotDecoder
from blipq.inference.search import CohortSearch, search_rules
from tests.helpers import varied_images
from tests.inference.test_engine import OPTION_SETS, decoded_inputs, reference_ids


@pytest.fixture(scope="module", params=["cohorts stepped together", "fixed slots"])
def engines(tiny_checkpoint: Path, request: pytest.FixtureRequest) -> Iterator[tuple[CaptionEngine, CaptionEngine]]:
    """(blipq's search, transformers' generate) on one model instance: a generation-config change reaches both.
    blipq's decoder in either layout: the CPU's (cohorts' steps together) or CUDA's (fixed-shape steps, run
    eagerly here; on CUDA each shape's step is a CUDA graph, see test_cuda.py)."""
    loaded = CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32")
    with torch.no_grad():
        loaded.model.text_decoder.cls.predictions.decoder.bias[loaded.model.config.text_config.sep_token_id] += 2.5
    fixed = request.param == "fixed slots"
    ours = CaptionEngine(loaded.model, loaded.processor, loaded.device, loaded.dtype, fixed_slots=fixed)
    assert isinstance(ours._text_decoder, FixedSlotDecoder) == fixed
    theirs = CaptionEngine(ours.model, ours.processor, ours.device, ours.dtype, decoder="transformers")
    config = ours.model.text_decoder.generation_config
    saved = config.to_dict()
    yield ours, theirs
    config.update(**saved)


@pytest.fixture(scope="module")
def prepared(engines: tuple[CaptionEngine, CaptionEngine]) -> list[torch.Tensor]:
    ours, _ = engines
    return [ours.prepare(image) for image in decoded_inputs() + varied_images()]


def test_the_engine_uses_its_own_search_by_default(engines: tuple[CaptionEngine, CaptionEngine]) -> None:
    ours, theirs = engines
    assert ours.decoder == "blipq"
    assert theirs.decoder == "transformers"


def test_captions_end_at_varied_lengths(
    engines: tuple[CaptionEngine, CaptionEngine], prepared: list[torch.Tensor]
) -> None:
    ours, _ = engines
    for beams in (1, 3):
        lengths = {len(ids) for ids in ours.generate(prepared, CaptionOptions(num_beams=beams, max_length=24))}
        assert len(lengths) >= 3, lengths
        assert max(lengths) == 24, lengths


@pytest.mark.parametrize("options", OPTION_SETS[:3], ids=lambda o: f"b{o.num_beams}-{o.prompt or 'noprompt'}")
def test_the_search_matches_transformers_documented_generate(
    engines: tuple[CaptionEngine, CaptionEngine], options: CaptionOptions
) -> None:
    ours, _ = engines
    images = decoded_inputs()
    expected = [reference_ids((ours.model, ours.processor), image, options) for image in images]
    assert ours.generate([ours.prepare(image) for image in images], options) == expected


EXTRA_OPTIONS = [
    CaptionOptions(num_beams=5, max_length=30, min_length=0),
    CaptionOptions(num_beams=4, prompt="", max_length=9, min_length=3, repetition_penalty=0.7),
    CaptionOptions(num_beams=1, max_length=25, min_length=0, repetition_penalty=2.0),
]


@pytest.mark.parametrize("options", OPTION_SETS + EXTRA_OPTIONS, ids=lambda o: f"b{o.num_beams}-{o.max_length}")
def test_both_decoders_give_the_same_tokens(
    engines: tuple[CaptionEngine, CaptionEngine], prepared: list[torch.Tensor], options: CaptionOptions
) -> None:
    ours, theirs = engines
    assert ours.generate(prepared, options) == theirs.generate(prepared, options)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.5, -1.5])
def test_the_checkpoints_early_stopping_and_length_penalty_are_followed(
    engines: tuple[CaptionEngine, CaptionEngine],
    prepared: list[torch.Tensor],
    early_stopping: bool | str,
    length_penalty: float,
) -> None:
    ours, theirs = engines
    ours.model.text_decoder.generation_config.update(early_stopping=early_stopping, length_penalty=length_penalty)
    try:
        rules, _ = search_rules(ours.model)
        ours._search_rules = rules
        assert rules is not None
        assert (rules.early_stopping, rules.length_penalty) == (early_stopping, length_penalty)
        options = CaptionOptions(num_beams=3, max_length=24, min_length=0)
        assert ours.generate(prepared, options) == theirs.generate(prepared, options)
    finally:
        ours.model.text_decoder.generation_config.update(early_stopping=None, length_penalty=None)
        ours._search_rules, _ = search_rules(ours.model)


def test_the_rules_change_the_outcome(
    engines: tuple[CaptionEngine, CaptionEngine], prepared: list[torch.Tensor]
) -> None:
    """The rule sets above are not all the same search in disguise."""
    ours, _ = engines
    outcomes = set()
    try:
        for early_stopping in (False, True, "never"):
            for length_penalty in (1.0, 0.0, 2.5, -1.5):
                config = ours.model.text_decoder.generation_config
                config.update(early_stopping=early_stopping, length_penalty=length_penalty)
                ours._search_rules, _ = search_rules(ours.model)
                outcomes.add(str(ours.generate(prepared, CaptionOptions(num_beams=3, max_length=24, min_length=0))))
    finally:
        ours.model.text_decoder.generation_config.update(early_stopping=None, length_penalty=None)
        ours._search_rules, _ = search_rules(ours.model)
    assert len(outcomes) >= 4


def test_a_config_the_search_does_not_implement_is_left_to_transformers(tiny_checkpoint: Path) -> None:
    engine = CaptionEngine.load(tiny_checkpoint, device="cpu", dtype="fp32")
    engine.model.text_decoder.generation_config.no_repeat_ngram_size = 2
    rules, unhandled = search_rules(engine.model)
    assert rules is None
    assert unhandled == ["no_repeat_ngram_size"]
    again = CaptionEngine(engine.model, engine.processor, engine.device, engine.dtype)
    assert again.decoder == "transformers"
    reference = CaptionEngine(engine.model, engine.processor, engine.device, engine.dtype, decoder="transformers")
    images = [again.prepare(image) for image in varied_images()]
    assert again.generate(images, CaptionOptions()) == reference.generate(images, CaptionOptions())


def test_searches_started_at_different_steps_share_steps_and_keep_their_captions(
    engines: tuple[CaptionEngine, CaptionEngine], prepared: list[torch.Tensor]
) -> None:
    """Continuous batching's exactness: cohorts with different options join at staggered steps, step through
    the decoder together, lose their finished images as they go, and every caption equals transformers'
    for that image alone in its own batch."""
    ours, theirs = engines
    arrivals = [  # (step at which the cohort starts, its images, its options)
        (0, prepared[0:4], CaptionOptions(num_beams=3, max_length=24, min_length=0)),
        (2, prepared[4:5], CaptionOptions(num_beams=1, max_length=16)),
        (2, prepared[5:8], CaptionOptions(num_beams=2, prompt="", max_length=20, repetition_penalty=1.3)),
        (7, prepared[8:12], CaptionOptions(num_beams=4, max_length=12, min_length=12)),
    ]
    results: dict[tuple[int, int], list[int]] = {}
    runs: dict[int, CohortSearch] = {}
    step, shared_steps = 0, 0
    while len(results) < 12:
        for number, (at, images, options) in enumerate(arrivals):
            if at == step:
                runs[number] = ours.start_search(images, options)
        for number, run in runs.items():
            if not run.done:
                results.update({(number, image): ids for image, ids in ours.advance_search(run).items()})
        live = [run for run in runs.values() if not run.done]
        shared_steps += len(live) > 1
        ours.step_searches(live)
        step += 1
    assert shared_steps >= 5
    for number, (_, images, options) in enumerate(arrivals):
        expected = theirs.generate(images, options)
        assert [results[(number, image)] for image in range(len(images))] == expected
