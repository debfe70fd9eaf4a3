"""The chat task: a conversation rendered in the LM's chat template with the image's tokens
where ``<image>`` stands and the loss on the assistant's turns only (token by token), the
plain rendering of the small decoder, text-only conversations in a batch of images, a loss
that falls, joint training with captioning from the command line, evaluation, and
``tuwen ask --history`` on the saved model."""

import json
from pathlib import Path

import pytest
import torch

from hf_tiny import chat_lm_model, chat_tokenizer, save_bert, save_chat_lm, save_image_model
from tiny import task_collator, tiny_overrides
from tuwen.apps.cli import main
from tuwen.apps.pipeline import Pipeline
from tuwen.data.chat_text import IGNORE, generation_prompt, training_sequence
from tuwen.data.records import Conversation
from tuwen.data.tokenizer import train_tokenizer
from tuwen.data.vqa_text import prompt_ids
from tuwen.evaluation.evaluate import evaluate_run
from tuwen.models.chat import chat_format
from tuwen.models.hf_text import with_bos_eos
from tuwen.tasks import chat
from tuwen.tasks.base import StepInputs
from tuwen.tasks.table import joint_step

BEFORE, AFTER, NEXT = "<s><|start|>user\n", "<|eot|><|start|>assistant\n", "<|start|>user\n"
TURNS = [("user", "<image>\nwhat colour is the circle?"), ("assistant", "red"),
         ("user", "and the square?"), ("assistant", "a blue one")]


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def lm_tokenizer():
    return with_bos_eos(chat_tokenizer(), "model.decoder")


def test_a_conversation_is_the_templates_rendering_with_labels_on_the_replies_only():
    tok = lm_tokenizer()
    fmt = chat_format(tok, "auto")
    assert fmt.next_user == NEXT
    eot = fmt.end_token_id
    first = BEFORE + "\nwhat colour is the circle?" + AFTER
    second = NEXT + "and the square?" + AFTER
    head, tail = ids(tok, BEFORE), ids(tok, "\nwhat colour is the circle?" + AFTER)
    red = ids(tok, first + "red")[len(ids(tok, first)):]
    blue = ids(tok, second + "a blue one")[len(ids(tok, second)):]
    full = [*head, *tail, *red, eot, *ids(tok, second), *blue, eot]
    seq = training_sequence(tok, fmt, TURNS, 200)
    assert seq.input_ids == full[:-1]
    assert seq.labels == ([IGNORE] * (len(head) + len(tail) - 1) + [*red, eot]
                          + [IGNORE] * len(ids(tok, second)) + [*blue, eot])
    assert seq.image_at == len(head)  # the image goes where <image> stood
    # exactly what the tokenizer's own template renders, the marker cut out
    messages = [{"role": r, "content": t.replace("<image>", "")} for r, t in TURNS]
    assert tok.decode(full) == tok.apply_chat_template(messages, tokenize=False)
    replies = [tok.decode([t for t in seq.labels[s] if t != IGNORE])
               for s in (slice(0, len(head) + len(tail) + len(red)), slice(len(head) + len(tail)
                                                                          + len(red), None))]
    assert replies == ["red<|eot|>", "a blue one<|eot|>"]
    # cut to a budget: the end goes; nothing left to learn: no sequence
    short = training_sequence(tok, fmt, TURNS, len(head) + len(tail) + 1)
    assert [t for t in short.labels if t != IGNORE] == red[:2]
    assert training_sequence(tok, fmt, TURNS, len(head) + len(tail) - 1) is None


def test_a_first_question_is_prompted_as_generative_vqa_prompts_it():
    tok = lm_tokenizer()
    for fmt in (chat_format(tok, "auto"), None):
        prompt = generation_prompt(tok, fmt, [], "what colour is it?", with_image=False)
        assert prompt.ids == prompt_ids(tok, ["what colour is it?"], 40, fmt)[0]
        assert prompt.image_at is None
    fmt = chat_format(tok, "auto")
    later = generation_prompt(tok, fmt, TURNS, "and the triangle?", with_image=True)
    assert tok.decode(later.ids).endswith("a blue one<|eot|>" + NEXT + "and the triangle?"
                                          + AFTER)
    asked = generation_prompt(tok, fmt, [], "what is it?", with_image=True)
    assert asked.image_at == len(ids(tok, BEFORE))  # no marker: LLaVA's place, the start


def test_without_a_template_turns_are_plain_prompts_for_the_small_decoder():
    tok = train_tokenizer(["question answer what colour is the circle red and square blue one"],
                          vocab_size=100)
    seq = training_sequence(tok, None, TURNS, 100)
    full = [tok.bos_token_id, *ids(tok, "question: what colour is the circle? answer:"),
            *ids(tok, "red"), tok.eos_token_id,
            *ids(tok, "question: and the square? answer:"), *ids(tok, "a blue one"),
            tok.eos_token_id]
    assert seq.input_ids == full[:-1]
    assert tok.decode([t for t in seq.labels if t != IGNORE]) == "red [EOS] a blue one [EOS]"
    assert seq.image_at == 3  # [BOS] question :


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_task_hub")
    return {"vit": save_image_model("vit", root / "vit"), "bert": save_bert(root / "bert"),
            "lm": save_chat_lm(root / "lm")}


def conversation(i: int, turns, image: bool = True) -> Conversation:
    return Conversation(i, i if image else None, Path(f"{i}.png") if image else None, "train",
                        tuple(turns))


CONVERSATIONS = [
    conversation(0, TURNS),
    conversation(1, [("user", "what colour is this?\n<image>"), ("assistant", "green")]),
    conversation(2, [("user", "say hello"), ("assistant", "hello there")], image=False),
]


def items(pixels: torch.Tensor) -> list[dict]:
    """Two samples with an image, one text-only, as the dataset yields them."""
    return [{"pixel_values": None if c.image_path is None else pixels[i], "captions": [],
             "questions": [], "conversations": [c]} for i, c in enumerate(CONVERSATIONS)]


def chat_batch(model):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    collate = task_collator(model.tokenizer, None, 24, chat=model.spec.chat,
                            text_tokenizer=model.text_tokenizer, spec=model.spec)
    return collate(items(pixels))


def test_text_only_conversations_ride_in_a_batch_of_images(hub):
    model = chat_lm_model(hub, 24)
    batch = chat_batch(model)
    assert batch.size == 3 and batch.pixel_values.shape[0] == 2
    assert batch.conversations.image.tolist() == [0, 1, -1]
    part = batch.part("chat")
    assert part.image.tolist() == [0, 1, -1]
    for row, conv in enumerate(CONVERSATIONS):
        seq = training_sequence(model.tokenizer, model.spec.chat, conv.turns, 256)
        assert part.input_ids[row, : len(seq.input_ids)].tolist() == seq.input_ids
        assert part.labels[row, : len(seq.labels)].tolist() == seq.labels
        assert (part.labels[row, len(seq.labels):] == IGNORE).all()
    # the loss: every reply token of both forwards (images; text-only without any image)
    step = StepInputs(model, batch)
    loss = chat.chat_loss(step, part)
    image, text = part.image >= 0, part.image < 0
    parts = [model.decoder.loss(part.input_ids[image], step.image.tokens[part.image[image]],
                                part.labels[image], image_at=part.image_at[image]),
             model.decoder.loss(part.input_ids[text], torch.zeros(1, 0, 32), part.labels[text])]
    counts = [int((part.labels[rows] != IGNORE).sum()) for rows in (image, text)]
    expected = (parts[0] * counts[0] + parts[1] * counts[1]) / sum(counts)
    torch.testing.assert_close(loss, expected)


def test_the_image_tokens_are_spliced_in_where_the_marker_stood(hub):
    model = chat_lm_model(hub, 24).eval()
    decoder, lm = model.decoder, model.decoder.lm
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 200, (2, 9), generator=g)
    image = torch.randn(2, 17, 32, generator=g)
    at = torch.tensor([3, 6])
    with torch.no_grad():
        logits = decoder(input_ids, image, image_at=at).logits
        embeds, projected = lm.get_input_embeddings()(input_ids), decoder.projector(image)
        for row in range(2):
            a = int(at[row])
            joint = torch.cat([embeds[row, :a], projected[row], embeds[row, a:]])[None]
            full = lm(inputs_embeds=joint).logits[0]
            text = torch.cat([full[:a], full[a + 17:]])
            torch.testing.assert_close(logits[row], text, atol=1e-5, rtol=1e-5)
        front = decoder(input_ids, image).logits  # image_at 0 is the usual prefix
        torch.testing.assert_close(decoder(input_ids, image, image_at=torch.zeros(2).long())
                                   .logits, front)


def test_batched_cached_replies_equal_one_by_one(hub):
    model = chat_lm_model(hub, 24).eval()
    tok = model.tokenizer
    prompts = [generation_prompt(tok, model.spec.chat, h, m, True) for h, m in
               [([], "what is it?"), (TURNS, "and the triangle, is it green or blue?")]]
    image = model.encode_image(torch.randn(2, 3, 32, 32)).tokens
    together = chat.greedy_replies(model, image, prompts, 6)
    for row in range(2):
        alone = chat.greedy_replies(model, image[row: row + 1], prompts[row: row + 1], 6)
        assert together[row, : alone.shape[1]].tolist() == alone[0].tolist()


def test_the_chat_loss_falls(hub):
    torch.manual_seed(0)
    model = chat_lm_model(hub, 24).train()
    batch = chat_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        total, parts = joint_step(model, batch, {"chat": 1.0})
        assert set(parts) == {"chat"}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---- joint training from the command line, evaluation, tuwen ask -------------------------

def write_conversations(shapes: Path, path: Path) -> Path:
    """Conversations about the shapes images (their first caption as the reply, then a
    follow-up) and a few text-only ones."""
    doc = json.loads((shapes / "captions.json").read_text())
    records = []
    train = [image for image in doc["images"] if image["split"] == "train"][:24]
    for image in train + [image for image in doc["images"] if image["split"] != "train"]:
        records.append({"id": f"c{image['imgid']}", "image": f"images/{image['filename']}",
                        "split": image["split"], "conversations": [
                            {"from": "human", "value": "<image>\ndescribe the picture."},
                            {"from": "gpt", "value": image["sentences"][0]["raw"]},
                            {"from": "human", "value": "how many shapes?"},
                            {"from": "gpt", "value": str(len(image["sentences"][0]["raw"]
                                                             .split(" and ")))}]})
    for split in ("train", "test"):  # first: evaluation takes the first eval.max_images
        records[:0] = [{"id": f"t-{split}-{i}", "split": split, "conversations": [
            {"from": "human", "value": "say hello"}, {"from": "gpt", "value": "hello"}]}
            for i in range(3)]
    path.write_text(json.dumps(records))
    return path


def train_run(shapes: Path, run: Path, conversations: Path, *extra: str) -> Path:
    sources = json.dumps([{"name": "captions", "format": "karpathy"},
                          {"format": "llava", "path": str(conversations),
                           "image_root": str(shapes)}])
    sets = [*tiny_overrides(shapes, max_steps=6, save_every=6), f"data.sources={sources}",
            "train.tasks={caption: 1.0, itc: 1.0, itm: 0.0, chat: 1.0}", "eval.max_images=8",
            "eval.tasks=[chat]", "eval.decoding=greedy",
            "train.task_options.chat.max_new_tokens=6", *extra]
    assert main(["train", "configs/shapes.yaml", "--out", str(run),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    return run


def logged_losses(run: Path) -> set[str]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k for line in lines for k in line if k.startswith(("loss_", "val_loss_"))}


def check_ask(run: Path, image: Path, tmp_path: Path, capsys) -> list[dict]:
    history = tmp_path / "conversation.json"
    model = str(run / "model")
    assert main(["ask", model, str(image), "describe the picture.", "--history",
                 str(history)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["ask", model, str(image), "how many shapes?", "--history", str(history)]) == 0
    second = capsys.readouterr().out.strip()
    turns = json.loads(history.read_text())
    assert turns == [{"role": "user", "content": "describe the picture."},
                     {"role": "assistant", "content": first},
                     {"role": "user", "content": "how many shapes?"},
                     {"role": "assistant", "content": second}]
    # the pipeline answers the second question as the conversation's next turn
    pipe = Pipeline.from_pretrained(model, device="cpu")
    again = pipe.answer([image], ["how many shapes?"], histories=[
        [(t["role"], t["content"]) for t in turns[:2]]])[0]
    assert again.text == second and again.alternatives == []
    return turns


def test_chat_trains_jointly_with_captioning_on_the_small_decoder(tiny_shapes, tmp_path,
                                                                 capsys):
    conversations = write_conversations(tiny_shapes, tmp_path / "chat.json")
    run = train_run(tiny_shapes, tmp_path / "run", conversations, "train.eval_every=6",
                    "train.val_max_images=60")
    assert {"loss_caption", "loss_itc", "loss_chat", "val_loss_chat"} <= logged_losses(run)
    metrics = evaluate_run(run, "test", tasks=["caption", "chat"], show_progress=False)
    assert metrics["chat"]["conversations"] > 0 and metrics["chat"]["text_only"] == 3
    assert {"bleu_4", "cider", "rouge_l", "exact_match"} <= set(metrics["chat"])
    assert "caption" in metrics and "reference" in metrics["protocol"]["chat"]
    lines = [json.loads(x) for x in (run / "eval" / "test" / "predictions.jsonl")
             .read_text().splitlines()]
    assert {line["task"] for line in lines} >= {"caption", "chat"}
    capsys.readouterr()
    check_ask(run, sorted((tiny_shapes / "images").glob("*.png"))[0], tmp_path, capsys)


def test_chat_trains_jointly_on_an_instruct_lm_saves_and_answers_with_history(
        tiny_shapes, hub, tmp_path, capsys):
    conversations = write_conversations(tiny_shapes, tmp_path / "chat.json")
    run = train_run(tiny_shapes, tmp_path / "run", conversations,
                    "model.decoder.type=hf_causal_lm", f"model.decoder.name_or_path={hub['lm']}",
                    "train.task_options.chat.max_length=64")
    assert {"loss_caption", "loss_chat"} <= logged_losses(run)
    metrics = evaluate_run(run, "test", show_progress=False)  # eval.tasks: [chat]
    assert "chat" in metrics and "caption" not in metrics
    capsys.readouterr()
    check_ask(run, sorted((tiny_shapes / "images").glob("*.png"))[0], tmp_path, capsys)


@pytest.mark.parametrize("history, message", [
    ('{"role": "user"}', "expected a list of turns"),
    ('[{"role": "assistant", "content": "hi"}]', "h.json[0].role: expected 'user'"),
    ('[{"role": "user", "content": "hi"}]', "the last turn must be the assistant's reply"),
    ('[{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]',
     "h.json[0].content: expected a non-empty text"),
    ("[1]", "h.json[0]: expected an object"),
    ("not json", "not valid JSON"),
])
def test_a_bad_history_file_is_a_one_line_error(tmp_path, capsys, history, message):
    path = tmp_path / "h.json"
    path.write_text(history)
    assert main(["ask", str(tmp_path / "no-model"), "x.png", "q?", "--history", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
