"""Who may call the server: the API key (deny by default, constant-time, a JSON 401), CORS off
unless origins are listed, and no open server beyond loopback without --insecure."""

import http.client
import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import serving  # noqa: E402

from tuwen.apps import access as access_module  # noqa: E402
from tuwen.apps.access import Access, check_binding, is_loopback  # noqa: E402
from tuwen.apps.cli import main  # noqa: E402
from tuwen.apps.server import create_app  # noqa: E402
from tuwen.errors import TuwenError  # noqa: E402

KEY = "k3y-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(pipeline):
    with TestClient(create_app(pipeline, access=Access(KEY))) as c:
        yield c


def unauthorized(response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


@pytest.mark.parametrize("headers, reason", [
    ({}, "needs an API key"),
    ({"Authorization": "Bearer wrong-key-0123456789abc"}, "the API key is wrong"),
    ({"Authorization": f"Bearer {KEY}x"}, "the API key is wrong"),
    ({"Authorization": f"Bearer {KEY[:-1]}"}, "the API key is wrong"),
    ({"Authorization": f"Basic {KEY}"}, "expected the header 'Authorization: Bearer KEY'"),
    ({"Authorization": "Bearer "}, "expected the header"),
    ({"Authorization": KEY}, "expected the header"),
])
def test_every_v1_call_needs_the_key(keyed, headers, reason):
    for method, path in [("GET", "/v1/health"), ("POST", "/v1/caption"), ("POST", "/v1/search"),
                         ("POST", "/v1/answer"), ("POST", "/v1/attention"),
                         ("GET", "/v1/images/0"), ("GET", "/v1/nothing-here")]:
        assert reason in unauthorized(keyed.request(method, path, headers=headers))


def test_the_right_key_opens_the_api_and_the_page_and_docs_stay_public(keyed, pipeline):
    health = keyed.get("/v1/health", headers=BEARER)
    assert health.status_code == 200 and health.json()["model_id"] == pipeline.model_id
    assert KEY not in health.text  # the limits it reports do not include the key
    assert keyed.get("/v1/health", headers={"authorization": f"bearer {KEY}"}).status_code == 200
    assert keyed.get("/v1/nothing-here", headers=BEARER).status_code == 404
    for path in ["/", "/docs", "/openapi.json"]:
        assert keyed.get(path).status_code == 200
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert all(op["security"] == [{"bearer": []}] and "401" in op["responses"]
               for ops in spec["paths"].values() for op in ops.values())


def test_the_key_is_compared_in_constant_time(keyed, monkeypatch):
    compared = []
    real = access_module.hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(access_module.hmac, "compare_digest", spy)
    unauthorized(keyed.get("/v1/health", headers={"Authorization": "Bearer x" * 3}))
    assert keyed.get("/v1/health", headers=BEARER).status_code == 200
    assert compared == [(32, 32), (32, 32)]  # digests: equal lengths whatever was sent


@pytest.mark.parametrize("key", ["short", "a key with spaces 0123456", "tab\tkey-0123456789ab"])
def test_weak_or_malformed_keys_are_refused(key):
    with pytest.raises(TuwenError, match="at least 16 printable characters"):
        Access(key)


def test_without_origins_no_cross_origin_call_is_allowed(pipeline):
    with TestClient(create_app(pipeline)) as c:
        simple = c.get("/v1/health", headers={"Origin": "https://evil.example"})
        assert simple.status_code == 200
        assert not any(h.startswith("access-control-") for h in simple.headers)
        preflight = c.options("/v1/search", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers


def test_listed_origins_may_call_with_the_key_and_others_may_not(pipeline):
    access = Access(KEY, ("https://app.example", "http://localhost:3000"))
    with TestClient(create_app(pipeline, access=access)) as c:
        preflight = c.options("/v1/search", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200  # answered before the key is asked for
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        ok = c.get("/v1/health", headers={**BEARER, "Origin": "http://localhost:3000"})
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        denied = c.get("/v1/health", headers={"Origin": "https://app.example"})
        assert denied.status_code == 401  # CORS lets the page read why
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/v1/search", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/path", "ftp://x"])
def test_malformed_origins_are_refused(origin):
    with pytest.raises(TuwenError, match="--cors-origin"):
        Access(None, (origin,))


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_key_or_insecure():
    check_binding("127.0.0.1", Access(), insecure=False)
    check_binding("0.0.0.0", Access(KEY), insecure=False)
    check_binding("0.0.0.0", Access(), insecure=True)
    with pytest.raises(TuwenError, match="--host 0.0.0.0 serves beyond this machine"):
        check_binding("0.0.0.0", Access(), insecure=False)


def test_the_cli_refuses_an_open_public_bind_in_one_line(trained_run, capsys, monkeypatch):
    monkeypatch.delenv("TUWEN_API_KEY", raising=False)
    assert main(["serve", str(trained_run / "model"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuwen: error: --host 0.0.0.0") and "--insecure" in err
    assert "\n" not in err


def test_the_cli_takes_the_key_from_the_environment(trained_run, monkeypatch):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("TUWEN_API_KEY", KEY)
    assert main(["serve", str(trained_run / "model"), "--host", "0.0.0.0", "--device", "cpu",
                 "--cors-origin", "https://app.example"]) == 0
    assert served["host"] == "0.0.0.0"
    with TestClient(served["app"]) as c:
        unauthorized(c.get("/v1/health"))
        assert c.get("/v1/health", headers=BEARER).status_code == 200
    monkeypatch.setenv("TUWEN_API_KEY", "short")
    assert main(["serve", str(trained_run / "model")]) == 2


def test_a_401_over_loopback_is_json(pipeline):
    with serving(create_app(pipeline, access=Access(KEY))) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("POST", "/v1/search", body=b'{"query": "x"}',
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
    assert response.status == 401 and "needs an API key" in body["error"]
