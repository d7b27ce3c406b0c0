"""Caption options: how a caption is generated, with the original project's defaults."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from blipq.contract.errors import InvalidOptions

#: The prompt the original BLIP caption decoder conditioned on and then cut from its output.
DEFAULT_PROMPT = "a picture of "


class CaptionOptions(BaseModel):
    """How to generate a caption. Defaults reproduce the original project exactly.

    `max_length` and `min_length` count tokens including the prompt, as the original BLIP
    decoder did (`generate(max_length=20, min_length=5)` with the prompt as input).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_beams: int = Field(3, ge=1, le=16, description="Beam search width; 1 = greedy.")
    max_length: int = Field(20, ge=2, le=512, description="Maximum tokens, prompt included.")
    min_length: int = Field(5, ge=0, le=512, description="Minimum tokens, prompt included.")
    prompt: str = Field(
        DEFAULT_PROMPT,
        max_length=300,
        description="Text the caption starts from; removed from the returned caption. Empty = unconditional.",
    )
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1.0 = no penalty.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> CaptionOptions:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length})")
        return self

    def canonical_json(self) -> str:
        """Equal options give equal strings: queues group images into batches by this string."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def build(cls, **values: object) -> CaptionOptions:
        """Validate user-supplied values, raising `InvalidOptions` with pydantic's message."""
        given = {key: value for key, value in values.items() if value is not None}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']) or 'options'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidOptions(f"invalid caption options: {problems}") from None
