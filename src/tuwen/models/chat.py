"""Resolve an instruct LM's chat template into the prompts tuwen builds (config.chat).

The template is rendered once around placeholder messages, as ``apply_chat_template`` renders
it for a user (including any default system turn the template adds): the text before and
after the user's message, and the first token after the assistant's reply (its end of turn).
A template whose generation prompt is not the start of its rendered reply cannot be split
this way; that is a one-line error asking for ``chat_template: none``.

``model.decoder.system_prompt`` picks the system turn: ``default`` renders the messages as a
user would (SmolLM2's template then adds its own system turn), a text is sent as the system
message, and ``none`` removes the system turn from the rendered prompt: the text before the
user's turn header is cut back to what precedes the template's first turn (a BOS, or nothing).
"""

from __future__ import annotations

from tuwen.config import ModelConfig
from tuwen.config.chat import ChatFormat
from tuwen.errors import ConfigError

# the user's message for a caption: an instruct LM is asked, as a person would ask it
CAPTION_REQUEST = "Write a short caption for this image."
# text no template contains
_MESSAGE, _REPLY, _SYSTEM = "TUWENUSERMESSAGE", "TUWENASSISTANTREPLY", "TUWENSYSTEMPROMPT"


def decoder_chat(model: ModelConfig, tokenizer) -> ChatFormat | None:
    """The chat format of a Hugging Face LM decoder's tokenizer (``model.decoder``)."""
    if model.decoder.type != "hf_causal_lm":
        return None
    return chat_format(tokenizer, model.decoder.chat_template, model.decoder.system_prompt)


def special_ids(tokenizer, chat: ChatFormat | None) -> dict[str, int]:
    """The spec's pad/BOS/EOS ids: EOS is the chat template's end of turn when there is one
    (a reply ends there, and generation stops there)."""
    eos = tokenizer.eos_token_id if chat is None else chat.end_token_id
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos}


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def chat_format(tok, mode: str, system_prompt: str = "none",
                where: str = "model.decoder") -> ChatFormat | None:
    """The chat format of ``tok`` for ``model.decoder.chat_template`` = ``mode`` and
    ``system_prompt`` (``none``, ``default`` or a text); None for ``none`` or a tokenizer
    without a chat template."""
    if mode == "none" or tok is None or not has_chat_template(tok):
        return None
    system = [] if system_prompt in ("none", "default") else [_turn("system", system_prompt)]
    prompt = _render(tok, [*system, _turn("user", _MESSAGE)], True, where)
    full = _render(tok, [*system, _turn("user", _MESSAGE), _turn("assistant", _REPLY)], False,
                   where)
    before, _, after = prompt.partition(_MESSAGE)
    if prompt.count(_MESSAGE) != 1 or not full.startswith(prompt + _REPLY):
        raise ConfigError(f"{where}: the tokenizer's chat template does not render a reply "
                          "right after its generation prompt; set "
                          f"{where}.chat_template: none")
    closing = full[len(prompt) + len(_REPLY):]
    if system_prompt == "none":
        before = without_system_turn(tok, before, closing, where)
    caption_prompt = _ids(tok, before + CAPTION_REQUEST + after)
    extra = max(len(caption_prompt), len(_ids(tok, before + after))) + 1  # + end of turn
    end = end_of_turn(tok, closing)
    return ChatFormat(before, after, end, CAPTION_REQUEST, tuple(caption_prompt), extra,
                      system_prompt, next_user_turn(tok, [*system, _turn("user", _MESSAGE)],
                                                    end, where))


def next_user_turn(tok, first: list[dict], end: int, where: str) -> str:
    """The text between a reply's end-of-turn token and the next user message, as the
    template renders a second user turn (what the closing holds after that token, then the
    user's header)."""
    chat = _render(tok, [*first, _turn("assistant", _REPLY), _turn("user", _MESSAGE + "2")],
                   True, where)
    between = chat.partition(_REPLY)[2].partition(_MESSAGE + "2")[0]
    token = tok.convert_ids_to_tokens(end)
    return between[len(token):] if between.startswith(token) else between


def without_system_turn(tok, before: str, closing: str, where: str) -> str:
    """``before`` (the text ahead of the user's message) without any system turn: what
    precedes the first turn, then the user's turn header.

    The user's header is what a second user turn starts with after the assistant's
    closing; what precedes the first turn is what comes before a system turn's header
    (the user's header with ``user`` written ``system``). A template without a system role
    adds no system turn: ``before`` stays as it is."""
    second = _MESSAGE + "2"
    chat = _render(tok, [_turn("user", _MESSAGE), _turn("assistant", _REPLY),
                         _turn("user", second)], True, where)
    between = chat.partition(_REPLY)[2].partition(second)[0]  # closing + the user's header
    header = between[len(closing):]
    try:
        with_system = tok.apply_chat_template([_turn("system", _SYSTEM), _turn("user", _MESSAGE)],
                                              tokenize=False, add_generation_prompt=True)
    except Exception:  # no system role (Gemma-style templates): no system turn to remove
        return before
    opening = with_system.partition(_SYSTEM)[0]  # what precedes the turns + system header
    system_header = header.replace("user", "system")
    if not (between.startswith(closing) and header and before.endswith(header)
            and _SYSTEM in with_system and opening.endswith(system_header)):
        raise ConfigError(f"{where}.system_prompt: cannot tell where the chat template's "
                          f"system turn ends; set {where}.system_prompt: default (or a text)")
    return opening[: len(opening) - len(system_header)] + header


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
