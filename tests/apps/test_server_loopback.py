"""Issue #19's bad-input list against the real server: uvicorn on loopback, raw HTTP/1.1
requests from ``http.client`` (what a hostile client sends, not what a polite library
builds), each answered 4xx with a one-line JSON reason, and the server still up after."""

import http.client
import json
import resource
import time
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serve_helpers import image_folder, index_of, serving  # noqa: E402
from test_server import huge_png, png_bytes  # noqa: E402

from tuwen.apps.limits import ServeSettings  # noqa: E402
from tuwen.apps.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(pipeline, trained_run, tiny_shapes, tmp_path_factory):
    """(host, port) of the app with an index of 6 images, served on 127.0.0.1."""
    images = image_folder(tiny_shapes, tmp_path_factory, 6, "loopback_images")
    index = index_of(pipeline, trained_run, images, tmp_path_factory)
    app = create_app(pipeline, index, ServeSettings(timeout_s=300))
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*server, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def multipart(fields: dict[str, str] | None = None,
              file: tuple[str, bytes] | None = None) -> tuple[bytes, dict]:
    """A multipart/form-data body by hand: text ``fields`` and one ``image`` ``file``."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             .encode() + value.encode() + b"\r\n" for name, value in (fields or {}).items()]
    if file is not None:
        name, data = file
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def refused(result: tuple[int, dict, bytes], status: int) -> str:
    """The one-line reason of a JSON error answer with ``status``."""
    got, headers, body = result
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert set(error) == {"error"} and error["error"] and "\n" not in error["error"]
    return error["error"]


def caption(server, body_and_headers) -> tuple[int, dict, bytes]:
    body, headers = body_and_headers
    return request(server, "POST", "/v1/caption", body, headers)


JSON = {"Content-Type": "application/json"}


def test_not_an_image_and_a_truncated_image(server):
    assert "not an image of an accepted type" in refused(
        caption(server, multipart(file=("x.png", b"GIF89a? no, just text"))), 400)
    assert "truncated or corrupt" in refused(
        caption(server, multipart(file=("x.png", png_bytes()[:1000]))), 400)


def test_a_20000_by_20000_png_is_refused_before_it_is_decoded(server):
    bomb = huge_png(20_000)  # 400 million pixels: 1.2 GB as RGB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server is in-process
    start = time.perf_counter()
    reason = refused(caption(server, multipart(file=("big.png", bomb))), 413)
    assert "pixels" in reason and "limit of 40,000,000" in reason
    assert time.perf_counter() - start < 10
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MiB


@pytest.mark.parametrize("path, body, headers, status, reason", [
    ("/v1/caption", b"", {"Content-Type": "multipart/form-data; boundary=x"}, 400,
     "missing the 'image' file"),
    ("/v1/caption", b"", {}, 415, "got 'no content type'"),
    ("/v1/search", b"", JSON, 400, "malformed JSON"),
    ("/v1/answer", *multipart({"question": "what?"}, ("x.png", b"")), 400, "empty (0 bytes)"),
])
def test_empty_bodies_and_files(server, path, body, headers, status, reason):
    assert reason in refused(request(server, "POST", path, body, headers), status)


def test_a_10_mb_question_and_query(server):
    question = "what " * 2_000_000
    body, headers = multipart({"question": question}, ("x.png", png_bytes()))
    assert "longer than the limit" in refused(
        request(server, "POST", "/v1/answer", body, headers), 413)
    query = json.dumps({"query": question}).encode()
    assert "more than the limit of 300" in refused(
        request(server, "POST", "/v1/search", query, JSON), 413)


def test_a_body_past_the_limit_is_refused_by_its_length(server):
    body, headers = multipart(file=("x.png", png_bytes() + bytes(11 * 1024 * 1024)))
    assert "request body is larger than the limit" in refused(
        request(server, "POST", "/v1/caption", body, headers), 413)


def test_a_body_past_the_limit_is_refused_while_it_streams_in(server):
    """Chunked, with no Content-Length to refuse it by: the limit counts the bytes read."""
    body, headers = multipart(file=("x.png", png_bytes() + bytes(12 * 1024 * 1024)))
    conn = http.client.HTTPConnection(*server, timeout=120)
    try:
        conn.request("POST", "/v1/caption", body=iter([body[i: i + 65536] for i in
                                                       range(0, len(body), 65536)]),
                     headers={**headers, "Transfer-Encoding": "chunked"}, encode_chunked=True)
        response = conn.getresponse()
        result = response.status, dict(response.getheaders()), response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without an answer")
    finally:
        conn.close()
    assert "request body is larger than the limit" in refused(result, 413)


@pytest.mark.parametrize("path, content_type, status, reason", [
    ("/v1/caption", "application/json", 415, "expected multipart/form-data"),
    ("/v1/caption", "text/plain", 415, "expected multipart/form-data"),
    ("/v1/answer", "image/png", 415, "expected multipart/form-data"),
    ("/v1/search", "text/plain", 415, "expected application/json"),
])
def test_wrong_content_types(server, path, content_type, status, reason):
    result = request(server, "POST", path, png_bytes(), {"Content-Type": content_type})
    assert reason in refused(result, status)


@pytest.mark.parametrize("body", [b"{not json", b'{"query": "a red', b"\xff\xfe\x00",
                                  b"[1, 2]", b"null"])
def test_malformed_json(server, body):
    assert refused(request(server, "POST", "/v1/search", body, JSON), 400)


def test_unknown_image_ids(server):
    assert "image id 999 is not in the index" in refused(
        request(server, "GET", "/v1/images/999"), 404)
    assert "not in the index" in refused(
        caption(server, multipart({"image_id": "6"})), 404)  # ids 0..5
    refused(request(server, "GET", "/v1/images/-1"), 404)
    refused(request(server, "GET", "/v1/images/1e3"), 422)


@pytest.mark.parametrize("path", ["/v1/images/../../etc/passwd", "/v1/images/..%2F..%2Fetc",
                                  "/../../etc/passwd", "/v1/images/0/../../../etc/passwd",
                                  "/docs/../../etc/passwd"])
def test_dot_dot_in_urls_reaches_no_file(server, path):
    status, _, body = request(server, "GET", path)
    assert status in (404, 422) and b"root:" not in body


@pytest.mark.parametrize("fields, file, reason", [
    ({}, ("../../etc/passwd", None), "plain name, not a path"),
    ({}, ("..\\..\\x.png", None), "plain name, not a path"),
    ({}, ("a/../b.png", None), "plain name, not a path"),
    ({"image_id": "../../etc/passwd"}, None, "'image_id' must be an integer"),
])
def test_dot_dot_in_names_is_refused(server, fields, file, reason):
    file = None if file is None else (file[0], png_bytes())
    assert reason in refused(caption(server, multipart(fields, file)), 400)


def test_still_up_and_answering_after_the_bad_input(server):
    status, _, body = request(server, "GET", "/v1/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    got = caption(server, multipart(file=("ok.png", png_bytes())))
    assert got[0] == 200 and isinstance(json.loads(got[2])["caption"], str)
