"""``tuwen index`` with its phases announced and stretched, for the kill tests.

``python index_runner.py ARGS...`` runs ``tuwen index ARGS...`` with each embedding batch,
the write of the vectors and the write of the FAISS file announced (a line appended to
$TUWEN_INDEX_PHASES) and then held for $TUWEN_INDEX_PAUSE seconds; the two writes are held
half-way, with half the file on disk under its temporary name. A test can so SIGKILL the
process inside a phase of its choosing. Nothing else of ``tuwen index`` changes.
"""

import io
import os
import sys
import time


def announce(phase: str) -> None:
    with open(os.environ["TUWEN_INDEX_PHASES"], "a") as f:
        f.write(phase + "\n")
    time.sleep(float(os.environ.get("TUWEN_INDEX_PAUSE", "0.5")))


def write_in_halves(path, data: bytes, phase: str) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        announce(phase)
        f.write(data[len(data) // 2:])


def main() -> int:
    import faiss
    import numpy as np

    from tuwen.apps import index
    from tuwen.apps.cli import main as tuwen
    from tuwen.apps.pipeline import Pipeline

    embed = Pipeline.embed_images

    def embed_images(self, images):
        announce("embedding")
        return embed(self, images)

    def save_npy(path, array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        write_in_halves(path, buffer.getvalue(), "vectors")

    real_write = faiss.write_index

    def write_index(idx, path):
        writer = faiss.VectorIOWriter()  # faiss.serialize_index, which calls write_index
        real_write(idx, writer)
        write_in_halves(path, faiss.vector_to_array(writer.data).tobytes(), "faiss")

    Pipeline.embed_images = embed_images
    index._save_npy = save_npy
    faiss.write_index = write_index
    return tuwen(["index", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
