"""Helpers shared by the server tests: a folder of shapes images with its index, and an app
served by uvicorn on a free loopback port."""

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path


def image_folder(tiny_shapes: Path, tmp_path_factory, n: int, name: str) -> Path:
    """The first ``n`` shapes images, copied into a fresh folder."""
    root = tmp_path_factory.mktemp(name)
    for path in sorted((tiny_shapes / "images").glob("*.png"))[:n]:
        shutil.copy(path, root / path.name)
    return root


def index_of(pipeline, trained_run: Path, folder: Path, tmp_path_factory):
    """The index of ``folder`` built with the trained test model (exact search)."""
    from tuwen.apps.index import IndexOptions, build_index
    from tuwen.apps.search import ImageIndex

    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(pipeline, trained_run / "model", folder, out, IndexOptions(), show_progress=False)
    return ImageIndex(out)


@contextlib.contextmanager
def serving(app):
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
