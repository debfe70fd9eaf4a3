"""Reading the server's requests: bounded bodies, forms, JSON, images and texts.

Every refusal is a ``RequestError`` with an HTTP status and one line saying what was wrong;
the server turns it into ``{"error": ...}``.
"""

from __future__ import annotations

import json

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from tuwen.apps.conversation import parse_history
from tuwen.apps.images import ImageRejected, decode_image
from tuwen.apps.limits import ServeSettings
from tuwen.apps.search import ImageIndex, UnknownImage
from tuwen.data.images import load_image
from tuwen.errors import DataError, TuwenError


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: refuse a body past ``limit`` bytes, by its Content-Length or while
    it streams in, so an oversized upload is never held whole in memory."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_error(send, 413, str(BodyTooLarge(self.limit)))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited, send)


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_form(request: Request, settings: ServeSettings) -> FormData:
    if content_type(request) not in FORM_TYPES:
        raise RequestError(415, f"expected multipart/form-data (an 'image' file and text "
                                f"fields), got {content_type(request) or 'no content type'!r}")
    part_limit = history_bytes(settings)
    try:  # a text field longer than a few questions is refused while it is parsed
        return await request.form(max_files=1, max_fields=8, max_part_size=part_limit)
    except (MultiPartException, HTTPException) as err:  # starlette wraps the one in the other
        reason = str(getattr(err, "detail", err))
        if "maximum size" in reason:
            raise RequestError(413, f"a text field is longer than the limit of {part_limit:,} "
                                    "bytes") from None
        raise RequestError(400, f"malformed form: {reason}") from None


async def read_json(request: Request) -> dict:
    if content_type(request) != "application/json":
        raise RequestError(415, "expected application/json")
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"malformed JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "expected a JSON object")
    return data


def history_bytes(settings: ServeSettings) -> int:
    """The longest form field: a history of ``max_history_turns`` texts (each at most
    ``max_text_chars``, escaped), or one text."""
    return 4 * settings.max_text_chars * max(1, settings.max_history_turns) + 1024


def history_field(value, settings: ServeSettings) -> list[tuple[str, str]]:
    """``/v1/answer``'s optional ``history``: a JSON list of earlier turns
    (``apps.conversation``), each text within ``max_text_chars``."""
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise RequestError(400, "'history' must be text (a JSON list of turns)")
    try:
        turns = parse_history(json.loads(value))
    except json.JSONDecodeError as err:
        raise RequestError(400, f"'history' is not valid JSON: {err}") from None
    except TuwenError as err:
        raise RequestError(400, str(err)) from None
    if len(turns) > settings.max_history_turns:
        raise RequestError(413, f"'history' has {len(turns)} turns, more than the limit of "
                                f"{settings.max_history_turns}")
    for i, (_, content) in enumerate(turns):
        if len(content) > settings.max_text_chars:
            raise RequestError(413, f"history[{i}].content is {len(content):,} characters, "
                                    f"more than the limit of {settings.max_text_chars}")
    return turns


def text_field(value, name: str, settings: ServeSettings, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise RequestError(400, f"missing the {name!r} field")
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"{name!r} must be text")
    if len(value) > settings.max_text_chars:
        raise RequestError(413, f"{name!r} is {len(value):,} characters, more than the limit "
                                f"of {settings.max_text_chars}")
    if not value.strip():
        raise RequestError(400, f"{name!r} is blank")
    return value.strip()


def int_field(value, name: str, low: int, high: int, default: int | None = None,
              text: bool = True) -> int | None:
    """An integer from a form field (``text``: digits) or from JSON (a number, not a string;
    1.0 is 1 as JSON Schema counts it, 1.5 is refused rather than cut to 1)."""
    if value is None or value == "":
        return default
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not (whole or (text and isinstance(value, str))):
        raise RequestError(400, f"{name!r} must be an integer, got {str(value)[:40]!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, f"{name!r} must be an integer, got {str(value)[:40]!r}") from None
    if not low <= number <= high:
        raise RequestError(400, f"{name!r} must be between {low} and {high}, got {number}")
    return number


async def form_image(form: FormData, settings: ServeSettings,
                     index: ImageIndex | None) -> Image.Image:
    """The uploaded ``image`` file, decoded under the limits, or the index's ``image_id``."""
    upload, image_id = form.get("image"), form.get("image_id")
    if image_id is not None and upload is not None:
        raise RequestError(400, "give either an 'image' file or an 'image_id', not both")
    if image_id is not None:
        return await index_image(index, int_field(image_id, "image_id", -2**31, 2**31))
    if upload is None:
        raise RequestError(400, "missing the 'image' file field")
    if not isinstance(upload, UploadFile):
        raise RequestError(400, "'image' must be a file upload, not a text field")
    name = upload.filename or "image"
    if "/" in name or "\\" in name or ".." in name:
        raise RequestError(400, f"file name {name[:80]!r} must be a plain name, not a path")
    data = await upload.read(settings.max_upload_bytes + 1)
    try:
        return await run_in_threadpool(decode_image, data, settings.image_limits, name)
    except ImageRejected as err:
        raise RequestError(413 if err.too_large else 400, str(err)) from None


async def index_image(index: ImageIndex | None, image_id: int) -> Image.Image:
    if index is None:
        raise RequestError(404, "this server has no image index (start it with --index)")
    try:
        path = index.image_path(image_id)
        return await run_in_threadpool(load_image, path)
    except UnknownImage as err:
        raise RequestError(404, str(err)) from None
    except DataError:
        raise RequestError(404, f"image {image_id} is no longer readable") from None
