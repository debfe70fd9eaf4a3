"""Request bodies of the server's endpoints, for the OpenAPI page at /docs (the handlers
read their forms themselves, to refuse bad input with limits and clear messages)."""

from __future__ import annotations

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string", "description": "one line: what was wrong"}}}
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


def with_security(openapi):
    """``app.openapi`` wrapped: the schema also says that every operation needs the bearer
    key (and may answer 401), so /docs offers an Authorize button and clients know."""
    def schema() -> dict:
        spec = openapi()
        if "bearer" not in spec.get("components", {}).get("securitySchemes", {}):
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "tuwen serve --api-key"}
            for operations in spec["paths"].values():
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "missing or wrong API key", "content": {
                            "application/json": {"schema": ERROR}}}
        return spec
    return schema
