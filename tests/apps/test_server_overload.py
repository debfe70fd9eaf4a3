"""The server past its capacity: every request is answered 200 or 503 with Retry-After (by
the queue of its kind, or by the cap on requests in flight, before the body is read), none
hangs; and the flood of benchmarks/overload.py against a real ``tuwen serve``."""

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import image_folder  # noqa: E402

from tuwen.apps.limits import InFlightLimit, ServeSettings  # noqa: E402
from tuwen.apps.server import create_app  # noqa: E402


def slow_captions(seconds):
    def fn(items):
        time.sleep(seconds)
        return ["a caption"] * len(items)
    return fn


def test_past_the_in_flight_cap_a_request_is_a_json_503_before_its_body_is_read():
    answered, reads = [], []

    async def app(scope, receive, send):  # holds every request until released
        reads.append(await receive())
        while not release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    release = threading.Event()
    settings = ServeSettings(max_queue=1, max_batch=1, retry_after_s=3)  # 5 in flight
    limited = InFlightLimit(app, settings)
    client = TestClient(limited)  # no lifespan: the app above serves requests only
    threads = [threading.Thread(target=lambda: answered.append(client.post("/", content=b"x")))
               for _ in range(settings.max_in_flight)]
    for t in threads:
        t.start()
    while limited.in_flight < settings.max_in_flight:
        time.sleep(0.01)
    refused = client.post("/", content=b"never read")
    release.set()
    for t in threads:
        t.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert "5 requests are already being served" in refused.json()["error"]
    assert [r.status_code for r in answered] == [200] * 5 and len(reads) == 5
    assert limited.in_flight == 0


def test_a_full_queue_refuses_before_reading_the_form(pipeline, tiny_shapes, tmp_path_factory):
    images = sorted(image_folder(tiny_shapes, tmp_path_factory, 1, "overload").glob("*.png"))
    settings = ServeSettings(max_queue=2, max_batch=1, max_wait_ms=0, timeout_s=60)
    with TestClient(create_app(pipeline, settings=settings)) as client:
        client.app.state.service.batchers["caption"].fn = slow_captions(0.5)
        results = []

        def call():
            files = {"image": ("x.png", images[0].read_bytes(), "image/png")}
            results.append(client.post("/v1/caption", files=files))

        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # while the queue is full a body is not even parsed: a junk one is a 503, not a 400
        batcher = client.app.state.service.batchers["caption"]
        junk = {"content": b"\xff" * 100,
                "headers": {"content-type": "multipart/form-data; boundary=x"}}
        batcher.pending = settings.max_queue
        while_full = client.post("/v1/caption", **junk)
        batcher.pending = 0
        once_drained = client.post("/v1/caption", **junk)
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2
    assert all(r.headers["retry-after"] == "1" for r in results if r.status_code == 503)
    assert while_full.status_code == 503 and while_full.headers["retry-after"] == "1"
    assert once_drained.status_code == 400 and "malformed form" in once_drained.json()["error"]


@pytest.mark.slow  # a real server flooded for seconds
def test_a_short_flood_at_four_times_capacity(trained_run, tiny_shapes, tmp_path):
    from benchmarks.overload import parse, run

    args = parse(["--model", str(trained_run / "model"), "--images",
                  str(tiny_shapes / "images"), "--factor", "4", "--seconds", "10",
                  "--capacity-seconds", "5", "--probe-seconds", "5", "--timeout-s", "30",
                  "--threads", "1", "--out", str(tmp_path / "overload.json")])
    result = run(args)
    print(json.dumps(result["rows"]))
    flood = next(r for r in result["rows"] if r["phase"] == "flood")
    assert flood["requests"] == flood["ok_200"] + flood["busy_503_retry_after"]
    assert flood["busy_503_retry_after"] > 0 and flood["ok_200"] > 0
    assert flood["max_ms"] < 30_000 and result["server_alive_after"]
