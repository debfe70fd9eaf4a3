"""A conversation as the decoder reads it: its tokens, the labels (the assistant's replies
only) and where the image goes.

With an instruct LM's chat template (``chat``, config.chat.ChatFormat) the turns are
rendered as the template renders them:

    <before> user_1 <after> | reply_1 <end> | <next_user> user_2 <after> | reply_2 <end> ...

Without one (the small decoder, or ``chat_template: none``) each user turn is a plain prompt,
as generative VQA writes a question, and each reply ends with EOS:

    [BOS] "question: user_1 answer:" | " reply_1" [EOS] | "question: user_2 answer:" | ...

The replies (between bars) are the labels; everything else is IGNORE. A reply is tokenised
as the continuation of its prompt (data.vqa_text). The ``<image>`` marker of a user turn is
cut out of the text and its place remembered (``image_at``): a decoder that puts the image
into the sequence (``hf_causal_lm`` with ``conditioning: prefix``) splices the image's tokens
in there; one that reads the image by cross-attention reads it from every position. A first
turn without history renders exactly as generative VQA's prompt of the same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuwen.config.chat import ChatFormat
from tuwen.data.readers_llava import IMAGE_TOKEN
from tuwen.data.vqa_text import PROMPT, continuation_ids, end_id

IGNORE = -100
Turns = Sequence[tuple[str, str]]  # (role, text), role "user" or "assistant"


@dataclass
class Rendered:
    """A conversation's tokens, which of them are replies, and the image's place."""

    ids: list[int]
    reply: list[bool]        # per token: part of an assistant's reply (a label)
    image_at: int | None     # the image goes before ids[image_at]; None: no <image>


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def user_prompt(chat: ChatFormat | None, text: str, first: bool) -> str:
    """One user turn's text, up to where the reply starts."""
    if chat is None:
        return PROMPT.format(question=text)
    return chat.prompt(text) if first else chat.later_prompt(text)


def render(tok, chat: ChatFormat | None, turns: Turns) -> Rendered:
    """``turns`` in the LM's tokens (see the module's docstring)."""
    out = Rendered([], [], None)
    if chat is None:
        out.ids.append(tok.bos_token_id)
    prompt = ""
    for i, (role, text) in enumerate(turns):
        if role == "user":
            prompt = user_prompt(chat, text.strip(), first=i == 0)
            head, marker, tail = prompt.partition(IMAGE_TOKEN)
            out.ids += _ids(tok, head)
            if marker:
                out.image_at = len(out.ids)
            out.ids += _ids(tok, tail.replace(IMAGE_TOKEN, ""))
            prompt = prompt.replace(IMAGE_TOKEN, "")
        else:
            sep = " " if chat is None else ""
            reply = continuation_ids(tok, [prompt], [text.strip()], sep)[0]
            out.ids += [*reply, end_id(tok, chat)]
        out.reply += [role != "user"] * (len(out.ids) - len(out.reply))
    return out


@dataclass
class ChatSequence:
    """One conversation for teacher forcing."""

    input_ids: list[int]
    labels: list[int]        # the next token where it belongs to a reply; IGNORE elsewhere
    image_at: int            # the image's place in input_ids (0 when it has none)


def training_sequence(tok, chat: ChatFormat | None, turns: Turns,
                      max_length: int) -> ChatSequence | None:
    """``turns`` for teacher forcing, at most ``max_length`` inputs (a longer conversation
    loses its end); None when no reply token is left."""
    rendered = render(tok, chat, turns)
    ids, reply = rendered.ids[: max_length + 1], rendered.reply[: max_length + 1]
    labels = [t if r else IGNORE for t, r in zip(ids[1:], reply[1:])]
    if all(label == IGNORE for label in labels):
        return None
    image_at = 0 if rendered.image_at is None else min(rendered.image_at, len(ids) - 1)
    return ChatSequence(ids[:-1], labels, image_at)


def generation_prompt(tok, chat: ChatFormat | None, history: Turns, message: str,
                      with_image: bool) -> Rendered:
    """The prompt to generate the reply to ``message`` after ``history`` (alternating user
    and assistant turns). ``with_image``: when no turn holds ``<image>``, the image goes at
    the start of the first user turn, as LLaVA's data has it."""
    turns = [*history, ("user", message)]
    if with_image and not any(IMAGE_TOKEN in text for _, text in turns):
        turns[0] = ("user", f"{IMAGE_TOKEN}\n{turns[0][1]}")
    return render(tok, chat, turns)
