"""tuwen: image-text joint training."""
import importlib

__version__ = "0.1.0"
__all__ = ["ImageTextModel", "Pipeline", "__version__"]

# Lazy facade: `import tuwen` (which every layer does, for __version__) loads nothing else;
# `tuwen.ImageTextModel` (`tuwen.Pipeline`) imports its layer on first access. No import-time
# layer dependency, hence importlib rather than an import statement (tests/test_layering.py).
_LAZY = {"ImageTextModel": "tuwen.models.image_text_model", "Pipeline": "tuwen.apps.pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuwen' has no attribute {name!r}")
