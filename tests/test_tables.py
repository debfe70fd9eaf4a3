"""The name tables cannot drift: every config type has what builds or reads it, and the
reverse; every task's heads are head types the model knows; and the way from ``tuwen train``
to a task's loss stays short."""

import inspect

from tiny import tiny_overrides, tiny_spec
from tuwen.apps.cli import main
from tuwen.config import DECODERS, FUSIONS, IMAGE_ENCODERS, REDUCTIONS, SOURCES, TEXT_ENCODERS
from tuwen.data.sources import READERS
from tuwen.models import builder, token_reduction
from tuwen.models.heads import HEADS
from tuwen.models.spec import default_heads
from tuwen.tasks.captioning import CaptionTask
from tuwen.tasks.table import TASKS, model_heads


def test_every_config_type_has_its_builder_and_every_builder_its_config_type():
    pairs = {"data sources": (SOURCES, READERS), "fusions": (FUSIONS, builder.FUSIONS),
             "image encoders": (IMAGE_ENCODERS, builder.IMAGE_ENCODERS),
             "text encoders": (TEXT_ENCODERS, builder.TEXT_ENCODERS),
             "decoders": (DECODERS, builder.DECODERS),
             "token reductions": (REDUCTIONS, token_reduction.REDUCTIONS)}
    for kind, (configs, builders) in pairs.items():
        assert set(configs) == set(builders), kind


def test_task_heads_are_known_head_types_and_the_built_in_default_is_the_tables():
    spec = tiny_spec()
    heads = model_heads(spec)
    assert all(h["type"] in HEADS for h in heads.values())
    assert heads == default_heads(spec)  # models saved before spec.heads rebuild the same


def test_every_task_is_named_as_its_table_key_and_trainable_ones_have_a_loss():
    for name, task in TASKS.items():
        assert task.name == name
        overrides_loss = type(task).loss is not type(task).__mro__[-2].loss
        assert task.trains == overrides_loss, name


def test_tuwen_train_reaches_a_tasks_loss_in_at_most_six_calls(tiny_shapes, tmp_path,
                                                               monkeypatch):
    depths = []
    real = CaptionTask.loss

    def loss(self, step, options):
        frames = inspect.stack()[1:]
        below = frames[: [f.function for f in frames].index("cmd_train")]
        # tuwen's calls from cmd_train down to this loss (not torch's Module.__call__, nor a
        # comprehension's frame)
        ours = [f for f in below if "/tuwen/" in f.filename and not f.function.startswith("<")]
        depths.append(len(ours) + 1)
        return real(self, step, options)

    monkeypatch.setattr(CaptionTask, "loss", loss)
    sets = tiny_overrides(tiny_shapes, max_steps=1, save_every=1)
    assert main(["train", "configs/shapes.yaml", "--out", str(tmp_path / "run"),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    assert depths and max(depths) <= 6, depths
