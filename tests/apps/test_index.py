"""Image search: building, incremental updates, deletion, the model check, exact against
approximate FAISS indexes, and the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tuwen
from tuwen.apps.cli import main
from tuwen.apps.index import (
    META_FILE,
    Entry,
    IndexMismatch,
    IndexOptions,
    build_faiss,
    build_index,
    read_entries,
    read_vectors,
    set_search_options,
)
from tuwen.apps.index_shards import SHARD_DIR, merge_shards, write_shard
from tuwen.apps.search import ImageIndex, UnknownImage, search_index
from tuwen.errors import TuwenError


@pytest.fixture
def folder(tiny_shapes, tmp_path):
    """12 shapes images in two nested folders, and a file that is not an image."""
    root = tmp_path / "images"
    images = sorted((tiny_shapes / "images").glob("*.png"))[:12]
    for i, image in enumerate(images):
        target = root / ("a" if i < 6 else "b/c") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (root / "notes.txt").write_text("not an image")
    return root


def build(pipeline, trained_run, folder, out, **options):
    return build_index(pipeline, trained_run / "model", folder, out, IndexOptions(**options),
                       batch_size=5, show_progress=False)


def test_build_embeds_every_image_once(pipeline, trained_run, folder, tmp_path):
    report = build(pipeline, trained_run, folder, tmp_path / "idx")
    assert (report.total, report.added, report.removed, report.kind) == (12, 12, 0, "exact")
    entries = read_entries(tmp_path / "idx")
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert all(e.path.startswith(("a/", "b/c/")) for e in entries)
    vectors = read_vectors(tmp_path / "idx")
    np.testing.assert_allclose(vectors, pipeline.embed_images([folder / e.path for e in entries]),
                               atol=1e-5)
    index = ImageIndex(tmp_path / "idx")
    hits = search_index(index, pipeline, image=folder / entries[3].path, k=3)
    assert hits[0].id == 3 and hits[0].score == pytest.approx(1, abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3]


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted(pipeline, trained_run,
                                                                   folder, tmp_path):
    out = tmp_path / "idx"
    build(pipeline, trained_run, folder, out)
    again = build(pipeline, trained_run, folder, out)
    assert (again.added, again.removed, again.unchanged) == (0, 0, 12)
    files = sorted(folder.rglob("*.png"))
    files[0].unlink()                                      # deleted
    shutil.copy(files[2], files[1])                        # changed content (and mtime)
    os.utime(files[1], ns=(1, 10**18))
    shutil.copy(files[3], folder / "b" / "new.png")        # new
    report = build(pipeline, trained_run, folder, out)
    assert (report.total, report.added, report.removed, report.unchanged) == (12, 2, 2, 10)
    entries = read_entries(out)
    assert files[0].relative_to(folder).as_posix() not in {e.path for e in entries}
    vectors = read_vectors(out)
    np.testing.assert_allclose(vectors, pipeline.embed_images([folder / e.path for e in entries]),
                               atol=1e-5)


def test_unreadable_images_are_skipped_and_reported(pipeline, trained_run, folder, tmp_path):
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = build(pipeline, trained_run, folder, tmp_path / "idx")
    assert report.total == 12 and len(report.skipped) == 1 and "broken.png" in report.skipped[0]


def test_another_model_is_a_clear_error(pipeline, trained_run, folder, tmp_path):
    out = tmp_path / "idx"
    build(pipeline, trained_run, folder, out)
    meta = json.loads((out / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps({**meta, "model_id": "0123456789abcdef"}))
    with pytest.raises(IndexMismatch, match="built with model 0123456789abcdef"):
        search_index(ImageIndex(out), pipeline, query="a red circle")
    with pytest.raises(IndexMismatch):
        build(pipeline, trained_run, folder, out)


@pytest.mark.parametrize("options, kind", [
    ({"exact_below": 0, "approximate": "hnsw"}, "hnsw"),
    ({"exact_below": 0, "approximate": "ivf", "ivf_lists": 2, "ivf_probe": 2}, "ivf"),
])
def test_approximate_indexes_find_what_the_exact_one_finds(pipeline, trained_run, folder,
                                                           tmp_path, options, kind):
    build(pipeline, trained_run, folder, tmp_path / "exact")
    assert build(pipeline, trained_run, folder, tmp_path / kind, **options).kind == kind
    exact, approx = ImageIndex(tmp_path / "exact"), ImageIndex(tmp_path / kind)
    for query in ("a red circle", "a blue square above a green triangle"):
        want, got = (search_index(i, pipeline, query=query, k=5) for i in (exact, approx))
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def test_image_ids_are_bounds_checked(pipeline, trained_run, folder, tmp_path):
    build(pipeline, trained_run, folder, tmp_path / "idx")
    index = ImageIndex(tmp_path / "idx")
    assert index.image_path(0).is_file()
    for bad in (-1, 12, 10**9):
        with pytest.raises(UnknownImage, match=f"image id {bad} is not in the index"):
            index.image_path(bad)


def test_shards_merge_in_rank_order(tmp_path):
    for rank in (1, 0):
        entries = [Entry(f"r{rank}-{i}.png", i, i) for i in range(rank + 1)]
        write_shard(tmp_path, rank, entries, np.full((rank + 1, 4), rank, np.float32),
                    [f"bad{rank}"])
    entries, vectors, skipped = merge_shards(tmp_path, 2, Entry)
    assert [e.path for e in entries] == ["r0-0.png", "r1-0.png", "r1-1.png"]
    assert vectors[:, 0].tolist() == [0, 1, 1] and skipped == ["bad0", "bad1"]


def test_cli_index_and_search(trained_run, folder, tmp_path, capsys):
    model, out = str(trained_run / "model"), str(tmp_path / "idx")
    assert main(["index", model, str(folder), "--out", out, "--device", "cpu"]) == 0
    assert "12 images indexed (exact): 12 embedded" in capsys.readouterr().out
    assert main(["index", model, str(folder), "--out", out, "--device", "cpu"]) == 0
    assert "0 embedded, 0 removed, 12 unchanged" in capsys.readouterr().out
    assert main(["search", out, "a red circle", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(Path(h["path"]).is_file() for h in hits)
    image = sorted(folder.rglob("*.png"))[0]
    assert main(["search", out, "--image", str(image), "-k", "12"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == [str(i) for i in range(1, 13)]
    scores = {path: float(score) for _, score, path in rows}
    # the query image finds itself at cosine 1 (a tiny model may tie other images with it)
    assert scores[str(image)] == pytest.approx(1, abs=1e-3)
    assert scores[str(image)] >= max(scores.values()) - 1e-6


@pytest.mark.parametrize("argv, message", [
    (["search", "{idx}"], "give a text QUERY or --image IMG"),
    (["search", "{tmp}", "x"], "no index here"),
    (["index", "{model}", "{tmp}/nowhere", "--out", "{idx}"], "not a folder of images"),
])
def test_cli_bad_input_is_one_line(trained_run, folder, tmp_path, capsys, argv, message):
    names = {"idx": tmp_path / "idx", "tmp": tmp_path, "model": trained_run / "model"}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_search_refuses_a_query_and_an_image_together(pipeline, trained_run, folder, tmp_path):
    build(pipeline, trained_run, folder, tmp_path / "idx")
    with pytest.raises(TuwenError, match="either a text query or an image"):
        search_index(ImageIndex(tmp_path / "idx"), pipeline, query="x", image=b"y")


def index_files(directory: Path) -> tuple[list[Entry], np.ndarray, dict]:
    return (read_entries(directory), read_vectors(directory),
            json.loads((directory / META_FILE).read_text()))


def torchrun_index(model: Path, folder: Path, out: Path) -> subprocess.CompletedProcess:
    src = str(Path(tuwen.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone",
                          "--nproc_per_node", "2", "-m", "tuwen", "index", str(model),
                          str(folder), "--out", str(out), "--device", "cpu", "--batch-size", "4"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def assert_same_index(pipeline, parallel: Path, single: Path) -> None:
    """Same rows and metadata, vectors equal within float tolerance, same search results."""
    (p_entries, p_vectors, p_meta), (s_entries, s_vectors, s_meta) = \
        index_files(parallel), index_files(single)
    assert p_entries == s_entries and p_meta == s_meta
    np.testing.assert_allclose(p_vectors, s_vectors, atol=1e-5)
    p_index, s_index = ImageIndex(parallel), ImageIndex(single)
    image = p_index.image_path(0)
    for query in ({"query": "a red circle"}, {"query": "two blue squares"}, {"image": image}):
        p_hits = search_index(p_index, pipeline, k=len(p_entries), **query)
        s_hits = search_index(s_index, pipeline, k=len(s_entries), **query)
        # equal scores may come back in either order: compare id -> score
        assert {h.id: h.path for h in p_hits} == {h.id: h.path for h in s_hits}
        s_scores = {h.id: h.score for h in s_hits}
        assert all(h.score == pytest.approx(s_scores[h.id], abs=1e-5) for h in p_hits)
        assert [h.score for h in p_hits] == pytest.approx([h.score for h in s_hits], abs=1e-5)


@pytest.mark.slow  # two torchrun launches of 2 processes
def test_torchrun_index_equals_the_single_process_index(pipeline, trained_run, folder,
                                                        tmp_path, tiny_shapes):
    """``torchrun --standalone --nproc_per_node 2 -m tuwen index``: each rank embeds half of
    the new files, the first merges; then an update (one file added, one deleted) the same."""
    model = trained_run / "model"
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    parallel, single = tmp_path / "parallel", tmp_path / "single"
    run = torchrun_index(model, folder, parallel)
    assert run.stdout.count("images indexed") == 1  # one report, from the first process
    assert "12 images indexed (exact): 12 embedded" in run.stdout
    assert run.stderr.count("skipped: ") == 1 and "broken.png" in run.stderr
    assert not (parallel / SHARD_DIR).exists()
    assert main(["index", str(model), str(folder), "--out", str(single), "--device", "cpu"]) == 0
    assert_same_index(pipeline, parallel, single)

    shutil.copy(sorted((tiny_shapes / "images").glob("*.png"))[-1], folder / "b" / "new.png")
    sorted(folder.glob("a/0*.png"))[0].unlink()
    run = torchrun_index(model, folder, parallel)
    assert "12 images indexed (exact): 1 embedded, 1 removed, 11 unchanged" in run.stdout
    assert main(["index", str(model), str(folder), "--out", str(single), "--device", "cpu"]) == 0
    assert_same_index(pipeline, parallel, single)


def test_the_pq_index_re_ranks_to_the_exact_neighbours():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.3 * rng.standard_normal((20, 32), dtype=np.float32)
    exact = build_faiss(vectors, IndexOptions(exact_below=10**6))
    options = IndexOptions(exact_below=0, approximate="pq", pq_rerank=50)
    approx = build_faiss(vectors, options)
    set_search_options(approx, options)
    assert type(approx).__name__ == "IndexRefineFlat" and approx.k_factor == 50
    (want_d, want), (got_d, got) = exact.search(queries, 10), approx.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]) >= 0.95
    hit = got == want  # where the same vector is found, its score is the exact one
    np.testing.assert_allclose(got_d[hit], want_d[hit], atol=1e-5)


def test_too_few_vectors_for_product_codes_are_searched_exactly():
    assert IndexOptions(exact_below=0, approximate="pq").kind(999) == "exact"
    assert IndexOptions(exact_below=0, approximate="pq").kind(1000) == "pq"
    assert IndexOptions(exact_below=0, approximate="hnsw").kind(10) == "hnsw"
