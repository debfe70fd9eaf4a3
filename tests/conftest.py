import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from a second thread, and on a shared 2-core machine two
# OpenMP threads per process stall each other (measured: a fusion test 65 s -> 1.4 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

from tiny import as_batch, tiny_spec
from tuwen.models.image_text_model import build_model


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_spec()).eval()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    b, lc, lq = 4, 9, 6
    rc, rq = 4, 4  # caption rows (image 0 has two captions, image 3 none), question rows
    return as_batch({
        "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
        "caption_image": torch.tensor([0, 0, 1, 2]),
        "caption_first": torch.tensor([True, False, True, True]),
        "caption_input_ids": torch.randint(7, 50, (rc, lc), generator=g),
        "caption_attention_mask": torch.ones(rc, lc, dtype=torch.long),
        "decoder_input_ids": torch.randint(7, 50, (rc, lc), generator=g),
        "labels": torch.randint(7, 50, (rc, lc), generator=g),
        "question_image": torch.tensor([0, 2, 3, 3]),
        "question_input_ids": torch.randint(7, 50, (rq, lq), generator=g),
        "question_attention_mask": torch.ones(rq, lq, dtype=torch.long),
        "vqa_targets": torch.rand(rq, 7, generator=g),
    })


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A small shapes dataset (32 px) shared by the training, evaluation and CLI tests."""
    from tuwen.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, image_size=32, n_train=64, n_val=8, n_test=16,
                    n_test_novel=8, progress=False)
    return root
