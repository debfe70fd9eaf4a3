"""Request bodies of the server's endpoints, for the OpenAPI page at /docs (the handlers
read their forms themselves, to refuse bad input with limits and clear messages)."""

from __future__ import annotations

_IMAGE = {"type": "string", "format": "binary",
          "description": "PNG, JPEG, WebP, GIF or BMP (checked by content)"}
_IMAGE_ID = {"type": "integer", "description": "instead of a file: an image of the index"}


def _form(properties: dict, description: str) -> dict:
    schema = {"type": "object", "properties": {"image": _IMAGE, "image_id": _IMAGE_ID,
                                                **properties}}
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": schema}}}}


CAPTION = _form({}, "An image; the answer is its caption and the caption's tokens.")
QUESTION = _form({"question": {"type": "string"}},
                 "An image and a question; the answer comes with its top-5 alternatives.")
ATTENTION = _form({"text": {"type": "string", "description": "caption (default: generated)"},
                   "token": {"type": "integer", "description": "one token's heatmap over the "
                             "image (default: a grid of every token's)"}},
                  "A PNG of the decoder's attention per caption token over the image.")
SEARCH = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["query"], "properties": {
        "query": {"type": "string"}, "k": {"type": "integer", "default": 10}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": _IMAGE, "image_id": _IMAGE_ID, "k": {"type": "integer", "default": 10}}}}}}}
