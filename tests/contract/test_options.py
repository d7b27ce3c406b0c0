import pytest

from blipq.contract.errors import InvalidOptions
from blipq.contract.options import CaptionOptions


def test_defaults_are_the_original_projects() -> None:
    options = CaptionOptions()
    assert (options.num_beams, options.max_length, options.min_length) == (3, 20, 5)
    assert options.prompt == "a picture of "
    assert options.repetition_penalty == 1.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_length": 30, "max_length": 20}, "min_length \\(30\\) must not exceed max_length \\(20\\)"),
        ({"num_beams": 0}, "num_beams: Input should be greater than or equal to 1"),
        ({"num_beams": 64}, "num_beams: Input should be less than or equal to 16"),
        ({"repetition_penalty": 0}, "repetition_penalty: Input should be greater than 0"),
        ({"max_length": "long"}, "max_length: Input should be a valid integer"),
        ({"temperature": 0.7}, "temperature: Extra inputs are not permitted"),
    ],
)
def test_invalid_options_raise_a_clear_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOptions, match=message):
        CaptionOptions.build(**values)


def test_build_ignores_unset_values() -> None:
    assert CaptionOptions.build(num_beams=None, prompt="") == CaptionOptions(prompt="")
