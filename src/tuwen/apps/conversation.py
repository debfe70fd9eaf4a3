"""A conversation's earlier turns, as ``tuwen ask --history`` and ``/v1/answer``'s
``history`` field bring them: a JSON list of ``{"role": "user" | "assistant", "content":
text}``, alternating from a user turn and ending with the assistant's reply (the new
question is the next user turn). LLaVA's ``{"from": "human" | "gpt", "value": text}`` is
read too. Anything else is a one-line ``TuwenError`` naming the turn and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuwen.data.readers_llava import ROLES
from tuwen.errors import TuwenError

Turn = tuple[str, str]  # (role, content), role "user" or "assistant"


def parse_history(raw: Any, where: str = "history") -> list[Turn]:
    """``raw`` (a parsed JSON list) as checked turns."""
    if not isinstance(raw, list):
        raise TuwenError(f"{where}: expected a list of turns ({{\"role\", \"content\"}}), "
                         f"got {type(raw).__name__}")
    turns = []
    for i, turn in enumerate(raw):
        turns.append(_turn(turn, f"{where}[{i}]", "user" if i % 2 == 0 else "assistant"))
    if turns and turns[-1][0] != "assistant":
        raise TuwenError(f"{where}: the last turn must be the assistant's reply (the new "
                         "question is the next user turn)")
    return turns


def _turn(turn: Any, where: str, expected: str) -> Turn:
    if isinstance(turn, (list, tuple)) and len(turn) == 2:
        turn = {"role": turn[0], "content": turn[1]}
    if not isinstance(turn, dict):
        raise TuwenError(f"{where}: expected an object {{\"role\", \"content\"}}, got "
                         f"{type(turn).__name__}")
    role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
    role, content = turn.get(role_key), turn.get(content_key)
    if role not in ROLES:
        raise TuwenError(f"{where}.{role_key}: expected 'user' or 'assistant', got {role!r}")
    if ROLES[role] != expected:
        raise TuwenError(f"{where}.{role_key}: expected {expected!r} (turns alternate user, "
                         "assistant, starting with user)")
    if not isinstance(content, str) or not content.strip():
        raise TuwenError(f"{where}.{content_key}: expected a non-empty text")
    return ROLES[role], content.strip()


def read_history(path: str | Path) -> list[Turn]:
    """The turns a history file holds; a file that does not exist yet holds none."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "[]")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TuwenError(f"{path}: not valid JSON ({err})") from None
    return parse_history(raw, str(path))


def write_history(path: str | Path, turns: list[Turn]) -> None:
    """The conversation so far, as ``read_history`` reads it."""
    Path(path).write_text(json.dumps([{"role": r, "content": c} for r, c in turns],
                                     indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
