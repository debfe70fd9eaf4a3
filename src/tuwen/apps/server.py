"""``tuwen serve``: the Pipeline over HTTP (FastAPI), with the page at ``/``.

Caption, answer and search requests from concurrent callers are micro-batched
(apps.batcher); every model call runs on one model thread. Errors are JSON
``{"error": "..."}`` with a 4xx status (bad input; 401 without the API key, apps.access),
503 with Retry-After (queue full) or 504 (the per-request timeout). Search results carry an
id and a thumbnail URL, never a path.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tuwen.apps.access import Access, RequireKey
from tuwen.apps.batcher import Busy, MicroBatcher
from tuwen.apps.forms import (
    BodyLimit,
    RequestError,
    content_type,
    form_image,
    history_field,
    int_field,
    read_form,
    read_json,
    text_field,
)
from tuwen.apps.heatmap import overlay_png, thumbnail_jpeg
from tuwen.apps.limits import InFlightLimit, ServeSettings
from tuwen.apps.openapi import operations, with_security
from tuwen.apps.pipeline import Pipeline
from tuwen.apps.search import ImageIndex, UnknownImage
from tuwen.errors import DataError, TuwenError


class Service:
    """The pipeline, the index and one micro-batcher per kind of model call."""

    def __init__(self, pipe: Pipeline, index: ImageIndex | None,
                 settings: ServeSettings) -> None:
        if index is not None:
            index.check_model(pipe.model_id)
        self.pipe, self.index, self.settings = pipe, index, settings
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        # pictures are drawn off the model thread: a grid of heatmaps takes seconds of
        # matplotlib, which would hold every caption, answer and search queued behind it
        self.draw_thread = ThreadPoolExecutor(1, thread_name_prefix="draw")
        options = {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                   "max_queue": settings.max_queue, "retry_after_s": settings.retry_after_s,
                   "executor": self.model_thread}
        self.batchers = {
            "caption": MicroBatcher(self._captions, name="caption", **options),
            "answer": MicroBatcher(self._answers, name="answer", **options),
            "embed_text": MicroBatcher(pipe.embed_texts, name="embed_text", **options),
            "embed_image": MicroBatcher(pipe.embed_images, name="embed_image", **options),
            "attention": MicroBatcher(lambda items: [pipe.explain(*i) for i in items],
                                      name="attention", **{**options, "max_batch": 1}),
        }
        self.thumbnail = lru_cache(maxsize=1024)(self._thumbnail)

    def _captions(self, images: list) -> list[str]:
        s = self.settings
        return self.pipe.caption(images, decoding=s.decoding, beam_size=s.beam_size,
                                 max_length=s.max_length)

    def _answers(self, items: list) -> list:
        return self.pipe.answer([image for image, _, _ in items], [q for _, q, _ in items],
                                histories=[h for _, _, h in items])

    def _picture(self, image, maps, token) -> bytes:
        if token is None:
            from tuwen.evaluation.plots import attention_grid

            return attention_grid(_display(image), maps)
        if token >= len(maps.tokens):
            raise RequestError(400, f"'token' {token} is past the caption's "
                                    f"{len(maps.tokens)} tokens")
        return overlay_png(image, maps.maps[token], self.settings.thumbnail_px)

    def _thumbnail(self, image_id: int) -> bytes:
        from tuwen.data.images import load_image

        return thumbnail_jpeg(load_image(self.index.image_path(image_id)),
                              self.settings.thumbnail_px)

    def tokens(self, text: str) -> list[str]:
        """The caption's tokens as ``explain`` numbers its maps."""
        tok = self.pipe.tokenizer
        ids = tok(self.pipe.normalize(text), add_special_tokens=False, truncation=True,
                  max_length=self.pipe.model.spec.max_text_length - 1)["input_ids"]
        return tok.convert_ids_to_tokens(ids)

    async def run(self, kind: str, item):
        """One request through its batcher, within the per-request timeout."""
        return await self.within_timeout(self.batchers[kind].submit(item))

    async def attention_png(self, image, text: str | None, token: int | None) -> bytes:
        """The maps from the model thread, then the picture from the drawing thread."""
        maps = await self.batchers["attention"].submit((image, text))
        return await asyncio.get_running_loop().run_in_executor(
            self.draw_thread, self._picture, image, maps, token)

    async def within_timeout(self, work):
        try:
            return await asyncio.wait_for(work, self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"timed out after {self.settings.timeout_s:g} s; "
                                    "the server is overloaded") from None

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.draw_thread.shutdown(wait=False, cancel_futures=True)


class RefuseWhenFull:
    """ASGI middleware: a model request whose queue is full is answered 503 with Retry-After
    before routing or reading its body, so a flood costs the server little more than its
    headers (the batcher would refuse it too, later and dearer)."""

    KINDS = {"/v1/caption": "caption", "/v1/answer": "answer", "/v1/attention": "attention"}

    def __init__(self, app, service: Service) -> None:
        self.app, self.batchers = app, service.batchers

    def kind(self, scope) -> str | None:
        path = scope["path"]
        if path == "/v1/search":
            kind = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip()
            return "embed_image" if kind.lower() == b"multipart/form-data" else "embed_text"
        return self.KINDS.get(path)

    async def __call__(self, scope, receive, send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        kind = self.kind(scope) if post else None
        try:
            if kind is not None:
                self.batchers[kind].admit()
        except Busy as err:
            response = _error(503, str(err), {"Retry-After": str(err.retry_after)})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _display(image):
    import numpy as np

    from tuwen.data.images import resize_and_crop

    return np.asarray(resize_and_crop(image.convert("RGB"), 256))


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid request')}"


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_, err: RequestError):
        return _error(err.status, err.message)

    @app.exception_handler(Busy)
    async def busy(_, err: Busy):
        return _error(503, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(TuwenError)
    async def tuwen_error(_, err: TuwenError):
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(_, err: RequestValidationError):
        return _error(422, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def http_error(_, err: HTTPException):
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))


def create_app(pipe: Pipeline, index: ImageIndex | None = None,
               settings: ServeSettings | None = None, access: Access | None = None) -> FastAPI:
    """The app; ``access`` (default: open, same-origin only) sets its key and CORS origins."""
    settings, access = settings or ServeSettings(), access or Access()
    service = Service(pipe, index, settings)

    @asynccontextmanager
    async def lifespan(_):
        yield
        await service.close()

    app = FastAPI(title="tuwen", version="1", lifespan=lifespan,
                  description="Caption, question answering, image search and attention maps "
                              "from a trained tuwen model.")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RefuseWhenFull, service=service)
    if access.api_key is not None:
        app.add_middleware(RequireKey, api_key=access.api_key)
        app.openapi = with_security(app.openapi)
    app.add_middleware(InFlightLimit, settings=settings)  # a flood is refused first, cheaply
    if access.cors_origins:  # added last: outermost, so a preflight needs no key
        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins),
                           allow_methods=["GET", "POST"], max_age=600,
                           allow_headers=["Authorization", "Content-Type"])
    _handlers(app)
    _routes(app, service)
    return app


def _routes(app: FastAPI, service: Service) -> None:
    settings = service.settings
    spec = operations(settings)

    def described(operation_id: str) -> dict:
        return {"operation_id": operation_id, "openapi_extra": spec[operation_id]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("tuwen.apps").joinpath("static/index.html")
                            .read_text(encoding="utf-8"))

    @app.get("/v1/health", **described("health"))
    async def health():
        return {"status": "ok", "model_id": service.pipe.model_id,
                "index": None if service.index is None else {"images": len(service.index)},
                "waiting": {k: b.pending for k, b in service.batchers.items()},
                "batches": {k: dict(sorted(b.batch_sizes.items()))
                            for k, b in service.batchers.items()},
                "limits": settings.model_dump(mode="json")}

    @app.post("/v1/caption", **described("caption"))
    async def caption(request: Request):
        form = await read_form(request, settings)
        text = await service.run("caption", await form_image(form, settings, service.index))
        return {"caption": text, "tokens": service.tokens(text) if text else []}

    @app.post("/v1/answer", **described("answer"))
    async def answer(request: Request):
        form = await read_form(request, settings)
        question = text_field(form.get("question"), "question", settings)
        history = history_field(form.get("history"), settings)
        image = await form_image(form, settings, service.index)
        result = await service.run("answer", (image, question, history))
        return {"question": question, "answer": result.text,
                "alternatives": [{"answer": a, "probability": p} for a, p in result.alternatives]}

    @app.post("/v1/attention", response_class=Response, **described("attention"))
    async def attention(request: Request):
        form = await read_form(request, settings)
        text = text_field(form.get("text"), "text", settings, required=False)
        token = int_field(form.get("token"), "token", 0, 10_000)
        image = await form_image(form, settings, service.index)
        png = await service.within_timeout(service.attention_png(image, text, token))
        return Response(png, media_type="image/png")

    @app.post("/v1/search", **described("search"))
    async def search(request: Request):
        if service.index is None:
            raise RequestError(404, "this server has no image index (start it with --index)")
        if content_type(request) == "multipart/form-data":
            form = await read_form(request, settings)
            k = int_field(form.get("k"), "k", 1, settings.max_k, default=10)
            image = await form_image(form, settings, service.index)
            vector = await service.run("embed_image", image)
        else:
            body = await read_json(request)
            query = text_field(body.get("query"), "query", settings)
            k = int_field(body.get("k"), "k", 1, settings.max_k, default=10, text=False)
            vector = await service.run("embed_text", query)
        hits = await run_in_threadpool(service.index.search, vector, k)
        return {"results": [{"rank": h.rank, "id": h.id, "score": round(h.score, 5),
                             "thumbnail": f"/v1/images/{h.id}"} for h in hits]}

    @app.get("/v1/images/{image_id}", response_class=Response, **described("image"))
    async def image(image_id: int):
        if service.index is None:
            raise RequestError(404, "this server has no image index (start it with --index)")
        try:
            data = await run_in_threadpool(service.thumbnail, image_id)
        except UnknownImage as err:
            raise RequestError(404, str(err)) from None
        except DataError:
            raise RequestError(404, f"image {image_id} is no longer readable") from None
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})
