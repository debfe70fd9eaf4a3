"""The server's limits and batching settings, safe by default (``tuwen serve --help``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tuwen.apps.images import FORMATS, ImageLimits


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)   # one image file
    max_image_pixels: int = Field(40_000_000, ge=1)  # refused from the header, before decoding
    image_formats: tuple[str, ...] = FORMATS          # decided by the bytes, not the name
    max_text_chars: int = Field(300, ge=1)            # a question or a search query
    max_k: int = Field(100, ge=1)                     # search results per query
    max_batch: int = Field(16, ge=1)                  # requests per model call
    max_wait_ms: float = Field(5.0, ge=0)             # how long a batch waits to fill
    max_queue: int = Field(64, ge=1)                  # waiting requests per kind, then 503
    timeout_s: float = Field(30.0, gt=0)              # per request, then 504
    retry_after_s: int = Field(1, ge=1)               # the 503's Retry-After
    decoding: str = "beam"                            # captions, as tuwen caption
    beam_size: int = Field(3, ge=1)
    max_length: int = Field(30, ge=1)
    thumbnail_px: int = Field(256, ge=16)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_upload_bytes, self.max_image_pixels, self.image_formats)

    @property
    def max_body_bytes(self) -> int:
        """A whole request: one image and a few short form fields."""
        return self.max_upload_bytes + 64 * 1024
