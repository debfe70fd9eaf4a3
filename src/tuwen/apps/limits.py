"""The server's limits and batching settings, safe by default (``tuwen serve --help``), and
the cap on requests in flight that turns a flood into quick 503s."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from tuwen.apps.images import FORMATS, ImageLimits


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)   # one image file
    max_image_pixels: int = Field(40_000_000, ge=1)  # refused from the header, before decoding
    image_formats: tuple[str, ...] = FORMATS          # decided by the bytes, not the name
    max_text_chars: int = Field(300, ge=1)            # a question or a search query
    max_history_turns: int = Field(16, ge=0)          # earlier turns an answer may bring
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

    @property
    def max_in_flight(self) -> int:
        """Requests the server holds at once (reading, waiting, running): the queues of the
        kinds a flood can fill, and a batch running."""
        return self.max_queue * 4 + self.max_batch


class InFlightLimit:
    """ASGI middleware: past ``settings.max_in_flight`` requests being served, a new one is
    answered at once with a JSON 503 and Retry-After, before its body is read. (uvicorn's
    own ``limit_concurrency`` answers a plain-text 503 without Retry-After.)"""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.limit, self.retry_after = app, settings.max_in_flight, settings.retry_after_s
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            body = json.dumps({"error": f"the server is busy: {self.limit} requests are "
                                        f"already being served; try again in "
                                        f"{self.retry_after} s"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.retry_after).encode())]})
            return await send({"type": "http.response.body", "body": body})
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
