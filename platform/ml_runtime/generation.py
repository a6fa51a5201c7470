"""The text-generation contract: what a model's `generate` endpoint takes and yields, so that the
server can offer the OpenAI-compatible routes and the Open Inference Protocol generate extension
for it (ml_serving.generation) without knowing the model.

A model that generates text has a streaming endpoint named `generate`:

    def generate(self, prompt: str = "", messages: Optional[list[ChatMessage]] = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 1.0,
                 top_p: float = 1.0, seed: Optional[int] = None) -> Iterator[Generated]:

It continues `prompt`, or answers `messages` through its own chat template, and yields each
piece of text as it is decoded. The server does the rest, the same way for every model: stop
strings (it cuts the text and closes the generator), usage counts, the wire formats, `n`.
Standard library only: it is imported inside every model's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GENERATE_ENDPOINT = "generate"
# The parameters the server fills; a model's generate must accept every one of them.
GENERATE_PARAMETERS = ("prompt", "messages", "max_tokens", "temperature", "top_p", "seed")
DEFAULT_MAX_TOKENS = 256
# How a generation ended, as OpenAI names it: the model's end of text (or a stop string), or
# max_tokens reached.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass
class Generated:
    """One piece of a generation, as the model decodes it."""

    text: str  # the new text (may be empty, e.g. half of a multi-byte character)
    prompt_tokens: int  # the prompt's length in tokens, after the chat template
    completion_tokens: int  # tokens generated so far, this piece's included
    finish_reason: Optional[str] = None  # on the last piece: FINISH_STOP or FINISH_LENGTH
