"""The HTTP service through a real HTTP client: every endpoint, every bad input, the bounded
queue and the timeout, and the micro-batcher sharing model calls."""

import asyncio
import io
import json
import random
import resource
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import image_folder, index_of  # noqa: E402

from tuwen.apps.batcher import Busy, MicroBatcher  # noqa: E402
from tuwen.apps.limits import ServeSettings  # noqa: E402
from tuwen.apps.search import search_index  # noqa: E402
from tuwen.apps.server import create_app  # noqa: E402


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int = 20_000) -> bytes:
    """A real side x side 1-bit PNG: a few tens of KB on disk, side**2 pixels decoded."""
    rows = (b"\x00" + bytes((side + 7) // 8)) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def images(tiny_shapes, tmp_path_factory):
    return image_folder(tiny_shapes, tmp_path_factory, 10, "served")


@pytest.fixture(scope="module")
def index(pipeline, trained_run, images, tmp_path_factory):
    return index_of(pipeline, trained_run, images, tmp_path_factory)


@pytest.fixture(scope="module")
def client(pipeline, index):
    settings = ServeSettings(max_wait_ms=50, timeout_s=300)  # a slow shared test machine
    with TestClient(create_app(pipeline, index, settings)) as c:
        yield c


def upload(path_or_bytes, name="x.png", **fields):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"files": {"image": (name, data, "image/png")}, "data": fields}


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


def first_image(images):
    return sorted(images.glob("*.png"))[0]


def test_page_docs_and_health(client, index, pipeline):
    page = client.get("/")
    assert page.status_code == 200 and "<title>tuwen</title>" in page.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/caption", "/v1/answer", "/v1/search", "/v1/attention", "/v1/images/{image_id}",
            "/v1/health"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/caption"]["post"]["requestBody"]["content"]
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model_id"] == pipeline.model_id
    assert health["index"] == {"images": len(index)}


def test_caption_equals_the_pipeline_and_lists_its_tokens(client, pipeline, images):
    image = first_image(images)
    body = client.post("/v1/caption", **upload(image)).json()
    assert body["caption"] == pipeline.caption([image])[0]
    assert "".join(t.removeprefix("##") for t in body["tokens"]) == body["caption"].replace(" ", "")
    by_id = client.post("/v1/caption", data={"image_id": "0"}).json()
    assert by_id["caption"] == pipeline.caption([images / index_path(client, 0)])[0]


def index_path(client, image_id):
    return client.app.state.service.index.entries[image_id].path


def test_answer_with_five_alternatives(client, pipeline, images):
    image = first_image(images)
    body = client.post("/v1/answer", **upload(image, question="How many shapes are there?"))
    body = body.json()
    want = pipeline.answer([image], ["How many shapes are there?"])[0]
    assert body["answer"] == want.text and len(body["alternatives"]) == 5
    assert [a["answer"] for a in body["alternatives"]] == [a for a, _ in want.alternatives]


HISTORY = [{"role": "user", "content": "What is in the picture?"},
           {"role": "assistant", "content": "a red circle"}]


def test_answer_with_history_is_the_conversations_next_turn(client, pipeline, images):
    image = first_image(images)
    body = client.post("/v1/answer", **upload(image, question="And its size?",
                                              history=json.dumps(HISTORY))).json()
    want = pipeline.answer([image], ["And its size?"], histories=[
        [(t["role"], t["content"]) for t in HISTORY]])[0]
    assert body == {"question": "And its size?", "answer": want.text, "alternatives": []}
    # an empty history is none: the question is classified as before
    plain = client.post("/v1/answer", **upload(image, question="And its size?", history="[]"))
    assert len(plain.json()["alternatives"]) == 5


@pytest.mark.parametrize("history, status, reason", [
    ("not json", 400, "'history' is not valid JSON"),
    ('{"role": "user"}', 400, "history: expected a list of turns"),
    ('[{"role": "assistant", "content": "hi"}]', 400, "history[0].role: expected 'user'"),
    ('[{"role": "user", "content": "hi"}]', 400, "the last turn must be the assistant's"),
    ('[{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]', 400,
     "history[0].content: expected a non-empty text"),
    ('[{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]', 400,
     "history[1].role: expected 'user' or 'assistant', got 'bot'"),
    (json.dumps(HISTORY * 9), 413, "'history' has 18 turns, more than the limit of 16"),
    (json.dumps([{"role": "user", "content": "w" * 301}, HISTORY[1]]), 413,
     "history[0].content is 301 characters, more than the limit of 300"),
])
def test_a_bad_history_is_refused_in_one_line(client, images, history, status, reason):
    response = client.post("/v1/answer", **upload(first_image(images), question="and?",
                                                  history=history))
    assert reason in error_of(response, status)


def test_search_by_text_and_image_returns_ids_and_thumbnails_not_paths(client, index, pipeline,
                                                                       images):
    response = client.post("/v1/search", json={"query": "a red circle", "k": 4})
    results = response.json()["results"]
    want = search_index(index, pipeline, query="a red circle", k=4)
    assert [r["id"] for r in results] == [h.id for h in want]
    assert all(r["thumbnail"] == f"/v1/images/{r['id']}" for r in results)
    assert str(images) not in response.text and ".png" not in response.text
    by_image = client.post("/v1/search", **upload(images / index_path(client, 3), k="2")).json()
    assert by_image["results"][0]["id"] == 3
    thumb = client.get(results[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_attention_png_for_one_token_and_for_all(client, images):
    one = client.post("/v1/attention", **upload(first_image(images), text="a red circle",
                                                token="1"))
    assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(one.content)).size == (256, 256)
    grid = client.post("/v1/attention", **upload(first_image(images)))
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).width > 256
    assert "past the caption" in error_of(client.post("/v1/attention", **upload(
        first_image(images), text="a red circle", token="50")), 400)


def png_bytes(size=(32, 32)) -> bytes:
    """A PNG of noise: kilobytes, so a cut one lacks most of its pixel data."""
    buf = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3)).save(
        buf, format="PNG")
    return buf.getvalue()


BAD = [  # (request kwargs, status, part of the message)
    ({"files": {"image": ("x.png", b"hello, not an image", "image/png")}}, 400,
     "not an image of an accepted type"),
    ({"files": {"image": ("x.png", png_bytes()[:1000], "image/png")}}, 400, "truncated or corrupt"),
    ({"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty (0 bytes)"),
    ({"content": b""}, 415, "expected multipart/form-data"),
    ({"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400,
     "missing the 'image' file"),
    ({"json": {"image": "x"}}, 415, "expected multipart/form-data"),
    ({"data": {"image": "not a file"}}, 400, "must be a file upload"),
    ({"files": {"image": ("../../etc/passwd", png_bytes(), "image/png")}}, 400,
     "plain name, not a path"),
    ({"data": {"image_id": "99999"}}, 404, "image id 99999 is not in the index"),
    ({"data": {"image_id": "../etc"}}, 400, "'image_id' must be an integer"),
]


@pytest.mark.parametrize("kwargs, status, message", BAD)
def test_bad_caption_requests_are_4xx_with_a_reason(client, kwargs, status, message):
    assert message in error_of(client.post("/v1/caption", **kwargs), status)


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = huge_png()
    assert len(bomb) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.perf_counter()
    message = error_of(client.post("/v1/caption", **upload(bomb)), 413)
    assert "pixels" in message and "than the limit" in message
    assert time.perf_counter() - start < 5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # decoded, it would be 400 million pixels


def test_oversized_texts_and_bodies_are_refused(client, images, pipeline, index):
    image = first_image(images)
    huge = "what " * 2_000_000  # 10 MB
    assert "limit" in error_of(client.post("/v1/answer", **upload(image, question=huge)), 413)
    long = "a" * 301
    assert "301 characters, more than the limit of 300" in error_of(
        client.post("/v1/answer", **upload(image, question=long)), 413)
    assert "limit" in error_of(client.post("/v1/search", json={"query": huge}), 413)
    assert "missing the 'question' field" in error_of(client.post("/v1/answer", **upload(image)),
                                                      400)
    small = ServeSettings(max_upload_bytes=2048)
    with TestClient(create_app(pipeline, index, small)) as c:
        big = png_bytes((300, 300)) + bytes(200_000)
        assert "larger than the limit" in error_of(c.post("/v1/caption", **upload(big)), 413)


@pytest.mark.parametrize("kwargs, status, message", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "malformed JSON"),
    ({"content": b"query=x", "headers": {"content-type": "text/plain"}}, 415,
     "expected application/json"),
    ({"json": ["a list"]}, 400, "expected a JSON object"),
    ({"json": {"query": "   "}}, 400, "blank"),
    ({"json": {"query": "x", "k": 0}}, 400, "'k' must be between 1 and 100"),
    ({"json": {"query": "x", "k": "many"}}, 400, "'k' must be an integer"),
    ({"json": {"query": 5}}, 400, "'query' must be text"),
])
def test_bad_search_requests(client, kwargs, status, message):
    assert message in error_of(client.post("/v1/search", **kwargs), status)


@pytest.mark.parametrize("path, status", [
    ("/v1/images/99999", 404), ("/v1/images/-1", 404), ("/v1/images/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v1/images/abc", 422), ("/v1/nothing", 404),
])
def test_unknown_images_and_paths(client, path, status):
    error_of(client.get(path), status)


def test_server_stays_up_after_bad_input(client):
    assert client.get("/v1/health").json()["status"] == "ok"


def test_without_an_index_search_is_a_clear_404(pipeline):
    with TestClient(create_app(pipeline)) as c:
        assert c.get("/v1/health").json()["index"] is None
        assert "no image index" in error_of(c.post("/v1/search", json={"query": "x"}), 404)
        assert "no image index" in error_of(c.get("/v1/images/0"), 404)


def concurrently(n, fn):
    results = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i)))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_share_model_calls_and_get_their_own_results(pipeline, index,
                                                                         images):
    paths = sorted(images.glob("*.png"))[:8]
    want = pipeline.caption(paths)
    with TestClient(create_app(pipeline, index, ServeSettings(max_wait_ms=300))) as c:
        got = concurrently(8, lambda i: c.post("/v1/caption", **upload(paths[i])).json())
        sizes = c.get("/v1/health").json()["batches"]["caption"]
    assert [g["caption"] for g in got] == want
    assert sum(int(k) * v for k, v in sizes.items()) == 8 and max(map(int, sizes)) > 1


def slow(seconds):
    def fn(items):
        time.sleep(seconds)
        return ["done"] * len(items)
    return fn


def test_full_queue_answers_503_with_retry_after(pipeline, index, images):
    settings = ServeSettings(max_queue=1, max_batch=1, retry_after_s=7)
    with TestClient(create_app(pipeline, index, settings)) as c:
        c.app.state.service.batchers["caption"].fn = slow(1.0)
        got = concurrently(3, lambda i: c.post("/v1/caption", **upload(first_image(images))))
        busy = [r for r in got if r.status_code == 503]
        assert busy and all(r.headers["retry-after"] == "7" for r in busy)
        assert "busy" in busy[0].json()["error"] and "try again in 7 s" in busy[0].json()["error"]
        assert any(r.status_code == 200 for r in got)


def test_a_slow_request_times_out_with_504(pipeline, index, images):
    with TestClient(create_app(pipeline, index, ServeSettings(timeout_s=0.2))) as c:
        c.app.state.service.batchers["caption"].fn = slow(1.0)
        assert "timed out" in error_of(c.post("/v1/caption", **upload(first_image(images))), 504)


# ------------------------------------------------------------ the batcher alone


def test_batcher_shares_one_call_and_routes_results():
    calls = []

    def fn(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main():
        batcher = MicroBatcher(fn, max_batch=16, max_wait_ms=100)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [i * 10 for i in range(8)]
    assert calls == [list(range(8))]


def test_batcher_respects_max_batch_and_reports_errors_to_every_caller():
    calls = []

    def fn(items):
        calls.append(len(items))
        if 13 in items:
            raise ValueError("bad item")
        return items

    async def main():
        batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=50)
        ok = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        failed = await asyncio.gather(batcher.submit(13), batcher.submit(14),
                                      return_exceptions=True)
        await batcher.close()
        return ok, failed

    ok, failed = asyncio.run(main())
    assert ok == list(range(10)) and calls[:3] == [4, 4, 2]
    assert all(isinstance(f, ValueError) for f in failed)


def test_batcher_refuses_past_its_queue_and_skips_abandoned_requests():
    seen = []

    def fn(items):
        seen.extend(items)
        time.sleep(0.2)
        return items

    async def main():
        batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=0, max_queue=2)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.05)  # "a" is running
        abandoned = asyncio.ensure_future(batcher.submit("b"))
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="2 model requests are already waiting"):
            await batcher.submit("c")
        abandoned.cancel()
        await asyncio.gather(abandoned, return_exceptions=True)
        assert await first == "a" and await batcher.submit("d") == "d"
        await batcher.close()

    asyncio.run(main())
    assert seen == ["a", "d"]


def test_health_counts_batches_as_json(client):
    batches = client.get("/v1/health").json()["batches"]
    assert set(batches) == {"caption", "answer", "embed_text", "embed_image", "attention"}
    json.dumps(batches)
