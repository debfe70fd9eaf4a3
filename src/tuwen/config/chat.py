"""An instruct LM's chat template as tuwen prompts with it (``model.decoder.chat_template``).

Resolved once from the LM's tokenizer when a model is built (``models.chat.chat_format``) and
recorded in the model's ``config.json``, so a reloaded model prompts exactly as it was
trained, whatever its tokenizer's template says later:

    caption:  <before> caption_request <after> | caption <end>
    answer:   <before> question <after>        | answer <end>
    chat:     <before> message <after> | reply <end> <next_user> message <after> | reply <end> ...

``<before>`` holds the system turn that ``model.decoder.system_prompt`` chose (none, the
template's default, or a text) and the user's turn header.

The part before ``|`` is the prompt (a user turn, then the assistant's header); the part after
is the assistant's reply: the training target (the loss covers it only) and what generation
writes, stopping at the template's end-of-turn token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ChatFormat:
    before: str                  # the template's text before the user's message
    after: str                   # between the user's message and the assistant's reply
    end_token_id: int            # closes the reply: the target's last token, generation's stop
    caption_request: str         # the user's message that asks for a caption
    caption_prompt: tuple[int, ...]  # token ids of the caption's prompt, as generation starts
    extra_length: int            # positions the template adds to a text at most
    # model.decoder.system_prompt it was resolved with (`default` in models saved before it)
    system_prompt: str = "default"
    # between a reply's end-of-turn token and the next user message (a conversation's later
    # turns); None in models saved before conversations: ``before`` serves
    next_user: str | None = None

    def prompt(self, message: str) -> str:
        """The prompt text of one user message (the reply comes right after it)."""
        return f"{self.before}{message}{self.after}"

    def later_prompt(self, message: str) -> str:
        """The prompt text of a user message after a reply (a conversation's later turn)."""
        before = self.before if self.next_user is None else self.next_user
        return f"{before}{message}{self.after}"

    def to_dict(self) -> dict:
        return {**asdict(self), "caption_prompt": list(self.caption_prompt)}

    @classmethod
    def from_dict(cls, raw: dict) -> ChatFormat:
        return cls(**{**raw, "caption_prompt": tuple(raw["caption_prompt"])})
