"""Resolve an instruct LM's chat template into the prompts tuwen builds (config.chat).

The template is rendered once around placeholder messages, as ``apply_chat_template`` renders
it for a user (including any default system turn the template adds): the text before and
after the user's message, and the first token after the assistant's reply (its end of turn).
A template whose generation prompt is not the start of its rendered reply cannot be split
this way; that is a one-line error asking for ``chat_template: none``.
"""

from __future__ import annotations

from tuwen.config import ModelConfig
from tuwen.config.chat import ChatFormat
from tuwen.errors import ConfigError

# the user's message for a caption: an instruct LM is asked, as a person would ask it
CAPTION_REQUEST = "Write a short caption for this image."
_MESSAGE, _REPLY = "TUWENUSERMESSAGE", "TUWENASSISTANTREPLY"  # text no template contains


def decoder_chat(model: ModelConfig, tokenizer) -> ChatFormat | None:
    """The chat format of a Hugging Face LM decoder's tokenizer (``model.decoder``)."""
    if model.decoder.type != "hf_causal_lm":
        return None
    return chat_format(tokenizer, model.decoder.chat_template)


def special_ids(tokenizer, chat: ChatFormat | None) -> dict[str, int]:
    """The spec's pad/BOS/EOS ids: EOS is the chat template's end of turn when there is one
    (a reply ends there, and generation stops there)."""
    eos = tokenizer.eos_token_id if chat is None else chat.end_token_id
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos}


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def chat_format(tok, mode: str, where: str = "model.decoder") -> ChatFormat | None:
    """The chat format of ``tok`` for ``model.decoder.chat_template`` = ``mode``; None for
    ``none`` or a tokenizer without a chat template."""
    if mode == "none" or tok is None or not has_chat_template(tok):
        return None
    prompt = _render(tok, [_turn("user", _MESSAGE)], True, where)
    full = _render(tok, [_turn("user", _MESSAGE), _turn("assistant", _REPLY)], False, where)
    before, _, after = prompt.partition(_MESSAGE)
    if prompt.count(_MESSAGE) != 1 or not full.startswith(prompt + _REPLY):
        raise ConfigError(f"{where}: the tokenizer's chat template does not render a reply "
                          "right after its generation prompt; set "
                          f"{where}.chat_template: none")
    closing = full[len(prompt) + len(_REPLY):]
    caption_prompt = _ids(tok, before + CAPTION_REQUEST + after)
    extra = max(len(caption_prompt), len(_ids(tok, before + after))) + 1  # + end of turn
    return ChatFormat(before, after, end_of_turn(tok, closing), CAPTION_REQUEST,
                      tuple(caption_prompt), extra)


def end_of_turn(tok, closing: str) -> int:
    """The special token that closes the assistant's reply (``<|im_end|>``, ``<|eot_id|>``),
    else the tokenizer's EOS (templates that close a reply with plain text or nothing)."""
    ids = _ids(tok, closing)
    special = set(tok.all_special_ids) | {
        i for i, token in tok.added_tokens_decoder.items() if token.special}
    if ids and ids[0] in special:
        return ids[0]
    return tok.eos_token_id


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _render(tok, messages: list[dict], generation_prompt: bool, where: str) -> str:
    try:
        return tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=generation_prompt)
    except Exception as err:  # jinja2's TemplateError and whatever the template raises
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ConfigError(f"{where}: the tokenizer's chat template fails ({first}); set "
                          f"{where}.chat_template: none") from None


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]
