"""The body of `POST /v1/jobs`, which is also the body of a request message on the queue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from blipq.contract.options import CaptionOptions


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str | None = Field(None, description="Base64 image bytes (data: URL prefix allowed).")
    url: str | None = Field(None, description="http(s) URL, fetched when the job runs.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSpec:
        if (self.b64 is None) == (self.url is None):
            raise ValueError("each image needs exactly one of b64 or url")
        return self


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[ImageSpec] = Field(description="The images to caption, in order.")
    options: CaptionOptions = Field(default_factory=CaptionOptions)
