"""The server's OpenAPI description (/openapi.json, the page at /docs): request bodies with the
limits the handlers enforce, every answer each operation can give (errors included, with the
503's Retry-After), and links from a search result to the operations that take its id.

The handlers read their forms themselves, to refuse bad input with limits and clear messages;
this module says the same in the schema, so that a client (or a fuzzer, tests/apps/
test_server_fuzz.py) generated from it knows what is accepted and what comes back.
"""

from __future__ import annotations

from tuwen.apps.limits import ServeSettings

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string", "description": "one line: what was wrong"}}}
_IMAGE = {"type": "string", "format": "binary",
          "description": "PNG, JPEG, WebP, GIF or BMP (checked by content)"}
_IMAGE_ID = {"type": "integer", "description": "instead of a file: an image of the index"}
# Exactly one of image / image_id is said in words, not with oneOf: generators (schemathesis)
# negate a oneOf branch into bodies that still satisfy the other branch.
_ONE_IMAGE = "Exactly one of 'image' and 'image_id'. "


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _json(schema: dict, description: str = "OK", links: dict | None = None) -> dict:
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {**answer, "links": links} if links else answer


def _object(**properties) -> dict:
    return {"type": "object", "required": list(properties), "properties": properties}


_STRING, _STRINGS = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
BUSY = {**_error("the queue of waiting requests is full: try again after Retry-After seconds"),
        "headers": {"Retry-After": {"required": True, "description": "seconds",
                                    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}}
MODEL_ERRORS = {  # every operation that runs the model may answer these
    "400": _error("bad input: what was wrong, in one line"),
    "404": _error("an image id not in the index, or no index"),
    "413": _error("an image, a text or a body past its limit"),
    "415": _error("the wrong content type"),
    "503": BUSY,
    "504": _error("not answered within the per-request timeout"),
}


def _text(settings: ServeSettings, description: str, optional: bool = False) -> dict:
    """A text field as ``forms.text_field`` reads it: not blank, at most ``max_text_chars``;
    an optional one may also be empty (a form's way of leaving it out)."""
    return {"type": "string", "minLength": 0 if optional else 1,
            "maxLength": settings.max_text_chars, "pattern": r"^$|\S" if optional else r"\S",
            "description": description}


def _form(properties: dict, description: str, required: tuple[str, ...] = ()) -> dict:
    schema = {"type": "object",
              "properties": {"image": _IMAGE, "image_id": _IMAGE_ID, **properties}}
    if required:
        schema["required"] = list(required)
    return {"required": True, "description": _ONE_IMAGE + description,
            "content": {"multipart/form-data": {"schema": schema}}}


def _operation(body: dict | None, ok: dict, errors: dict) -> dict:
    operation = {"responses": {"200": ok, **errors}}
    return {**operation, "requestBody": body} if body else operation


def _by_id(operation_id: str, in_body: bool = False) -> dict:
    """A link: the first search result's id into ``operation_id``'s ``image_id``."""
    first = "$response.body#/results/0/id"
    if in_body:
        return {"operationId": operation_id, "requestBody": {"image_id": first}}
    return {"operationId": operation_id, "parameters": {"image_id": first}}


HISTORY = ("optional: the conversation's earlier turns, a JSON list of {\"role\": \"user\" | "
           "\"assistant\", \"content\": text}, alternating from a user turn and ending "
           "with the assistant's; the question is the next user turn")


def history_chars(settings: ServeSettings) -> int:
    """The longest ``history`` field the form parser takes (``forms.history_bytes``)."""
    return 4 * settings.max_text_chars * max(1, settings.max_history_turns)


def operations(settings: ServeSettings) -> dict[str, dict]:
    """``openapi_extra`` of each operation, by operation id."""
    k = {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 10}
    hits = _object(results={"type": "array", "items": _object(
        rank={"type": "integer", "minimum": 1}, id={"type": "integer", "minimum": 0},
        score={"type": "number"}, thumbnail=_STRING)})
    links = {"thumbnail": _by_id("image"), "caption": _by_id("caption", in_body=True),
             "attention": _by_id("attention", in_body=True)}
    token = {"type": "integer", "minimum": 0, "maximum": 10_000,
             "description": "one token's heatmap (default: a grid of every token's)"}
    png = {"description": "a PNG", "content": {"image/png": {"schema": _IMAGE}}}
    return {
        "health": _operation(None, _json(_object(
            status=_STRING, model_id=_STRING,
            index={"anyOf": [{"type": "null"}, _object(images={"type": "integer"})]},
            waiting={"type": "object"}, batches={"type": "object"},
            limits={"type": "object"})), {"503": BUSY}),
        "caption": _operation(
            _form({}, "An image; the answer is its caption and the caption's tokens."),
            _json(_object(caption=_STRING, tokens=_STRINGS)), MODEL_ERRORS),
        "answer": _operation(
            _form({"question": _text(settings, "the question"),
                   "history": {"type": "string", "maxLength": history_chars(settings),
                               "description": HISTORY}},
                  "An image and a question; the answer comes with its top-5 alternatives "
                  "(a classifying model), or as the next turn of a conversation when a "
                  "history is given.", required=("question",)),
            _json(_object(question=_STRING, answer=_STRING, alternatives={
                "type": "array", "items": _object(answer=_STRING,
                                                  probability={"type": "number"})})),
            MODEL_ERRORS),
        "attention": _operation(
            _form({"text": _text(settings, "caption (default, or empty: generated)",
                                      optional=True), "token": token},
                  "A PNG of the decoder's attention per caption token over the image."),
            png, MODEL_ERRORS),
        "search": _operation({"required": True, "content": {
            "application/json": {"schema": {"type": "object", "required": ["query"],
                                            "properties": {"query": _text(settings, "text"),
                                                           "k": {**k, "type": ["integer",
                                                                               "null"]}}}},
            "multipart/form-data": {"schema": {"type": "object", "description": _ONE_IMAGE,
                                               "properties": {"image": _IMAGE,
                                                              "image_id": _IMAGE_ID,
                                                              "k": k}}}}},
            _json(hits, "the best-matching images, best first", links), MODEL_ERRORS),
        "image": _operation(None, {"description": "a JPEG thumbnail", "content": {
            "image/jpeg": {"schema": _IMAGE}}}, {
                "404": _error("an image id not in the index, or no index"),
                "422": _error("an image id that is not an integer"), "503": BUSY}),
    }


def with_security(openapi):
    """``app.openapi`` wrapped: the schema also says that every operation needs the bearer
    key (and may answer 401), so /docs offers an Authorize button and clients know."""
    def schema() -> dict:
        spec = openapi()
        if "bearer" not in spec.get("components", {}).get("securitySchemes", {}):
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "tuwen serve --api-key"}
            for operations_ in spec["paths"].values():
                for operation in operations_.values():
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("responses", {})["401"] = _error(
                        "missing or wrong API key")
        return spec
    return schema
