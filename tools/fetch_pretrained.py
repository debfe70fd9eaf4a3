"""The real-weight folders the slow tests and documented runs read, fetched from the Hugging
Face hub by name into DIR/<folder> (needs the network once; everything after runs offline).

usage: python tools/fetch_pretrained.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

# folder name (what TUWEN_PRETRAINED_DIR holds) -> hub name
MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
          "minilm": "sentence-transformers/all-MiniLM-L6-v2",
          "dinov2-small": "facebook/dinov2-small",
          "mobilenet_v2": "google/mobilenet_v2_1.0_224"}
WANTED = ["*.json", "*.safetensors", "*.txt", "*.model"]  # config, weights, tokenizer files


def main(out: Path) -> int:
    from huggingface_hub import snapshot_download

    for folder, name in MODELS.items():
        target = out / folder
        if (target / "config.json").is_file():
            print(f"{target}: present")
            continue
        try:
            snapshot_download(name, local_dir=target, allow_patterns=WANTED)
        except Exception as err:  # offline, or the hub refused: one line, then stop
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            print(f"pretrained: cannot fetch {name} ({first}); on an offline machine put "
                  f"Hugging Face folders of these models under {out} by other means",
                  file=sys.stderr)
            return 2
        print(f"{target}: fetched {name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(Path(sys.argv[1])))
