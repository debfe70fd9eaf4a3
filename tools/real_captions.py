"""Build a small real captioned image set from Debian's ``tuxpaint-stamps-default``, offline.

Tux Paint's stamps are photographs and drawings (animals, food, vehicles, coins, ...), each
with a one-line English description written by the stamp's author in a ``.txt`` file beside
the image. This script writes them as a Karpathy split JSON that tuwen reads::

    OUT/images/<category>-<name>.jpg     224 px squares on white (the stamps are RGBA cut-outs)
    OUT/captions.json                    Karpathy format: one caption per image; train/val/test
    OUT/manifest.json                    package, version, licence, counts, parameters
    OUT/LICENSE.txt                      where the GPL-2 text and the copyright file are

Source (first that exists): ``--deb FILE`` (``apt-get download tuxpaint-stamps-default``,
extracted with ``dpkg-deb -x``), ``--stamps DIR``, or ``/usr/share/tuxpaint/stamps``
(``apt-get install tuxpaint-stamps-default``). Only stamps shipped as PNG are used (the
SVG-only ones would need a renderer). The split is fixed by a hash of each stamp's path, so
it does not depend on the file system's order. Provenance and licence: docs/data.md.

    python tools/real_captions.py /work/data/real --deb tuxpaint-stamps-default_*.deb
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PACKAGE = "tuxpaint-stamps-default"
DEFAULT_STAMPS = Path("/usr/share/tuxpaint/stamps")
IMAGE_SIZE = 224
N_TEST = 100
N_VAL = 50


@dataclass(frozen=True)
class Stamp:
    png: Path
    rel: str        # path under the stamps folder, without the extension
    caption: str


def read_caption(txt: Path) -> str:
    """The first line of a stamp's description is English; the other lines are ``lang=...``."""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and "=" not in line.split(" ")[0]:
            return line
    return ""


def find_stamps(root: Path) -> list[Stamp]:
    stamps = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        caption = read_caption(txt)
        if caption:
            stamps.append(Stamp(png, png.relative_to(root).with_suffix("").as_posix(), caption))
    return stamps


def split_of(rank: int) -> str:
    return "test" if rank < N_TEST else "val" if rank < N_TEST + N_VAL else "train"


def to_square(png: Path, size: int) -> Image.Image:
    """Composite the cut-out on white, scale its longer side to ``size``, centre it."""
    im = Image.open(png).convert("RGBA")
    scale = size / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((size - w) // 2, (size - h) // 2))
    return canvas.convert("RGB")


def package_version(root: Path) -> str:
    """The Debian version from the changelog shipped beside the stamps, if any."""
    import gzip
    changelog = root.parent.parent / "doc" / PACKAGE / "changelog.Debian.gz"
    if changelog.is_file():
        first = gzip.open(changelog, "rt", encoding="utf-8").readline()
        if "(" in first:
            return first.split("(", 1)[1].split(")", 1)[0]
    return "unknown"


def build(root: Path, out: Path, size: int = IMAGE_SIZE) -> dict:
    stamps = find_stamps(root)
    if not stamps:
        raise SystemExit(f"error: no stamps (PNG + TXT) under {root}")
    # rank by a hash of the path: a fixed split whatever order the files are listed in
    ranked = sorted(stamps, key=lambda s: hashlib.sha1(s.rel.encode()).hexdigest())
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for rank, stamp in enumerate(ranked):
        name = stamp.rel.replace("/", "-") + ".jpg"
        to_square(stamp.png, size).save(out / "images" / name, quality=92)
        images.append({"imgid": rank, "filepath": "images", "filename": name,
                       "split": split_of(rank), "source": stamp.rel,
                       "sentences": [{"raw": stamp.caption, "sentid": rank}]})
    (out / "captions.json").write_text(json.dumps({"dataset": "tuxpaint-stamps",
                                                   "images": images}, indent=1))
    counts = {s: sum(i["split"] == s for i in images) for s in ("train", "val", "test")}
    manifest = {"package": PACKAGE, "version": package_version(root), "licence": "GPL-2+",
                "copyright": "2002-2022 Bill Kendrick and the Tux Paint stamp contributors",
                "image_size": size, "captions_per_image": 1, "splits": counts,
                "n_images": len(images)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "LICENSE.txt").write_text(
        "Images and captions: Tux Paint stamps (Debian package tuxpaint-stamps-default),\n"
        "copyright 2002-2022 Bill Kendrick and contributors, GNU GPL version 2 or later.\n"
        "See /usr/share/doc/tuxpaint-stamps-default/copyright and "
        "/usr/share/common-licenses/GPL-2.\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--stamps", type=Path, help=f"the stamps folder (default {DEFAULT_STAMPS})")
    ap.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE}_*.deb to extract")
    ap.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.deb:
            if not args.deb.is_file():
                raise SystemExit(f"error: --deb {args.deb}: no such file")
            subprocess.run(["dpkg-deb", "-x", str(args.deb), tmp], check=True)
            root = Path(tmp) / "usr/share/tuxpaint/stamps"
        else:
            root = args.stamps or DEFAULT_STAMPS
        if not root.is_dir():
            raise SystemExit(f"error: {root}: no stamps folder; `apt-get install {PACKAGE}`, "
                             f"or `apt-get download {PACKAGE}` and pass --deb FILE")
        manifest = build(root, args.out, args.image_size)
    print(f"{manifest['n_images']} images from {PACKAGE} {manifest['version']} -> {args.out} "
          f"(splits {manifest['splits']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
