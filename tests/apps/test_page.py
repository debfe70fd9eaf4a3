"""The page at / in real headless Chromium (Debian's, driven by Playwright), against a real
server on loopback: upload an image, see the caption, click a word for its heatmap, ask a
question, search the index and caption a result."""

import contextlib
import io
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import image_folder, index_of, serving

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def browser_page(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium not installed (`make chromium` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed "
                                   "(pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=ARGS, headless=True,
            viewport={"width": 1100, "height": 820})
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)  # a shared, slow test machine
            yield page
        finally:
            context.close()


@pytest.fixture(scope="module")
def served(pipeline, trained_run, tiny_shapes, tmp_path_factory):
    from tuwen.apps.server import create_app

    root = image_folder(tiny_shapes, tmp_path_factory, 12, "page-images")
    return create_app(pipeline, index_of(pipeline, trained_run, root, tmp_path_factory)), root


def loaded(page, selector):
    return page.evaluate(f"Array.from(document.querySelectorAll('{selector}'))"
                         ".every(i => i.complete && i.naturalWidth > 0)")


def test_page_captions_explains_answers_and_searches(served, tmp_path):
    app, root = served
    errors, requests = [], []
    with serving(app) as url, browser_page(tmp_path) as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url + "/", wait_until="load")
        page.wait_for_function("document.getElementById('status').textContent.includes('index')")
        assert page.is_visible("#search-section")

        page.set_input_files("#file", str(sorted(root.glob("*.png"))[0]))
        page.wait_for_selector("#caption .token")
        caption = page.inner_text("#caption")
        assert caption.strip() and page.locator("#caption .token").count() >= 1
        page.locator("#caption .token").first.click()
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
        assert "looks" in page.inner_text("#heatmap-label")

        page.fill("#question", "how many shapes are there?")
        page.click("#ask")
        page.wait_for_selector("#alternatives li")
        assert page.locator("#alternatives li").count() == 5 and page.inner_text("#answer")

        page.fill("#query", "a red circle")
        page.click("#search")
        page.wait_for_selector("#results img")
        page.wait_for_function("Array.from(document.querySelectorAll('#results img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#results img").count() == 12
        page.locator("#results button").nth(2).click()
        page.wait_for_function("document.getElementById('result-caption').textContent"
                               ".startsWith('Image')")
        png = page.screenshot(full_page=True)
    assert errors == []
    assert all(u.startswith((url, "blob:")) for u in requests), requests  # nothing outside
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert len(shot.getcolors(maxcolors=1 << 20)) > 100  # text and pictures drawn


def test_page_without_an_index_hides_search_and_shows_refusals(pipeline, tmp_path):
    from tuwen.apps.server import create_app

    bad = tmp_path / "fake.png"
    bad.write_bytes(b"not really a png")
    with serving(create_app(pipeline)) as url, browser_page(tmp_path) as page:
        page.goto(url + "/", wait_until="load")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".includes('no image index')")
        assert not page.is_visible("#search-section")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#message.bad")
        assert "Refused" in page.inner_text("#message")
        assert "not an image" in page.inner_text("#message")


def test_page_asks_for_the_key_once_and_keeps_it_for_the_tab(served, pipeline, tmp_path):
    from tuwen.apps.access import Access
    from tuwen.apps.server import create_app

    key = "page-test-key-0123456789"
    app = create_app(pipeline, served[0].state.service.index, access=Access(key))
    root = served[1]
    errors, sent = [], []
    with serving(app) as url, browser_page(tmp_path) as page:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.goto(url + "/", wait_until="load")
        page.wait_for_selector("#key-section", state="visible")
        page.fill("#api-key", "a-wrong-key-0123456789")
        page.click("#key-ok")
        page.wait_for_function("document.getElementById('message').textContent"
                               ".includes('refused')")
        assert page.is_visible("#key-section")
        page.fill("#api-key", key)
        page.click("#key-ok")
        page.wait_for_function("document.getElementById('status').textContent.includes('index')")
        assert not page.is_visible("#key-section")

        page.set_input_files("#file", str(sorted(root.glob("*.png"))[0]))
        page.wait_for_selector("#caption .token")
        page.fill("#query", "a red circle")
        page.click("#search")
        page.wait_for_selector("#results img")
        page.wait_for_function("Array.from(document.querySelectorAll('#results img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)")

        page.reload(wait_until="load")  # the same tab: the key is kept, not asked again
        page.wait_for_function("document.getElementById('status').textContent.includes('index')")
        assert not page.is_visible("#key-section")
        assert page.evaluate("sessionStorage.getItem('tuwen-api-key')") == key
        assert page.evaluate("localStorage.length") == 0  # never stored beyond the tab
    assert errors == []
    api = [(u, auth) for u, auth in sent if u.startswith(url + "/v1/")]
    keyed = [auth for _, auth in api if auth is not None]
    assert keyed and all(auth == f"Bearer {key}" for auth in keyed[1:])
    unkeyed = [u for u, auth in api if auth is None]
    assert unkeyed == [url + "/v1/health"]  # only the very first call, before the key
