"""support_reply: a prompt-engineering model. No ML of its own: a prompt template (prompt.txt)
and a call to an OpenAI-compatible chat API, whose base URL and model are settings and whose
API key is a secret (declared in the BUILD file, supplied by each deploy environment, never in
the image).

By default it calls models/smollm2 by its namespace URL, through the gateway (or the load
balancer): `<smollm2's URL>/openai/v1`. Point SUPPORT_REPLY_BASE_URL at any other
OpenAI-compatible API (a hosted one, vLLM, ...) and nothing else changes. Upstream failures are
502/503/504 with the upstream's status (ml_runtime.upstream), never a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The platform runtime is in every model's environment (no requirement, no resolve).
from ml_runtime.errors import UpstreamError  # pants: no-infer-dep
from ml_runtime.upstream import model_url, post_json  # pants: no-infer-dep

SYSTEM_PROMPT = (Path(__file__).resolve().parent / "prompt.txt").read_text()
# The settings (the BUILD file's `env`, or a deploy's); the API key is the secret.
BASE_URL_ENV = "SUPPORT_REPLY_BASE_URL"  # default: smollm2's OpenAI API through the gateway
MODEL_ENV = "SUPPORT_REPLY_MODEL"
API_KEY_ENV = "SUPPORT_REPLY_API_KEY"
TIMEOUT_ENV = "SUPPORT_REPLY_TIMEOUT"  # seconds the chat API may take
PRODUCT_ENV = "SUPPORT_REPLY_PRODUCT"


@dataclass
class Reply:
    text: str
    model: str  # the model that wrote it, as the API says
    prompt_tokens: int
    completion_tokens: int


class Model:
    endpoint_examples = {"reply": {"subject": "Refund", "message": "I was charged twice for my order #123."}}

    def load(self) -> None:
        self.base_url = os.environ.get(BASE_URL_ENV) or model_url("smollm2", 1) + "openai/v1"
        self.model = os.environ.get(MODEL_ENV, "smollm2")
        self.timeout = float(os.environ.get(TIMEOUT_ENV, "30"))
        self.product = os.environ.get(PRODUCT_ENV, "our product")
        self.api_key = os.environ.get(API_KEY_ENV)
        if not self.api_key:
            raise RuntimeError(f"{API_KEY_ENV} is not set: it is a secret of this model, which the deploy "
                               "environment supplies (see the README's Secrets section)")
        print(f"support_reply: answering through {self.base_url} ({self.model})", flush=True)

    def reply(self, subject: str, message: str, max_tokens: int = 120) -> Reply:
        """A draft reply to a support ticket."""
        if not 1 <= max_tokens <= 1024:
            raise ValueError(f"max_tokens: between 1 and 1024, not {max_tokens}")
        answer = post_json(
            self.base_url.rstrip("/") + "/chat/completions",
            {"model": self.model, "max_tokens": max_tokens, "temperature": 0,
             "messages": [{"role": "system", "content": SYSTEM_PROMPT.format(product=self.product)},
                          {"role": "user", "content": f"Subject: {subject}\n\n{message}"}]},
            headers={"authorization": f"Bearer {self.api_key}"}, timeout=self.timeout)
        try:
            text = answer["choices"][0]["message"]["content"]
            usage = answer.get("usage") or {}
            return Reply(text.strip(), str(answer.get("model", self.model)), int(usage.get("prompt_tokens", 0)),
                         int(usage.get("completion_tokens", 0)))
        except (KeyError, IndexError, TypeError, ValueError):
            raise UpstreamError(f"{self.base_url} answered without a chat completion: {str(answer)[:300]}") from None
