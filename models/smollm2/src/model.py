"""smollm2: SmolLM2-135M-Instruct, a real small instruction-tuned LLM, generating text on the
CPU with transformers. It is one streaming endpoint, `generate` (the platform's text-generation
contract, ml_runtime.generation), from which the server makes the OpenAI-compatible API
(`/v<N>/openai/v1/chat/completions`, `/completions`, `/models`) and the Open Inference Protocol
generate extension; stop strings, usage and wire formats are the server's.

The decoding loop is written out rather than `model.generate()` with a streamer thread: each
token is yielded as it is decoded, a client that goes away (or a stop string) closes the
generator and so stops the loop at once, and a request's `seed` drives its own random
generator, never the process-wide one other requests use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

# The platform runtime is in every model's environment (no requirement, no resolve).
from ml_runtime.generation import DEFAULT_MAX_TOKENS, FINISH_LENGTH, FINISH_STOP, ChatMessage, Generated  # pants: no-infer-dep
from weights import WEIGHTS

WEIGHTS_DIR = Path(__file__).resolve().parent / WEIGHTS
# The context the model was trained with; a prompt and its completion must fit in it.
CONTEXT_TOKENS = 8192
# The most tokens one request may ask for: at ~10 tokens/s on one core, 1024 take under two
# minutes, inside the model's timeout. A deployment sets its own (env SMOLLM2_MAX_TOKENS).
MAX_TOKENS = int(os.environ.get("SMOLLM2_MAX_TOKENS", "1024"))
MIN_TEMPERATURE = 1e-4


class Model:
    endpoint_examples = {
        "generate": {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32},
    }

    def load(self) -> None:
        # One math thread per declared cpu, from the server (OMP_NUM_THREADS); torch reads it.
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
        self.model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR, dtype=torch.float32).eval()
        self.end_tokens = {self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)}

    def generate(self, prompt: str = "", messages: Optional[list[ChatMessage]] = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 1.0, top_p: float = 1.0,
                 seed: Optional[int] = None) -> Iterator[Generated]:
        """Continue `prompt`, or answer `messages` (roles system, user, assistant) through the
        model's chat template; yields the text as it is decoded. `temperature` 0 is greedy."""
        if messages:
            text = self.tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                      tokenize=False, add_generation_prompt=True)
        elif prompt:
            text = prompt
        else:
            raise ValueError("give `prompt` or `messages`")
        if max_tokens > MAX_TOKENS:
            raise ValueError(f"max_tokens: at most {MAX_TOKENS} per request here (SMOLLM2_MAX_TOKENS), not {max_tokens}")
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        prompt_tokens = ids.shape[1]
        if prompt_tokens + max_tokens > CONTEXT_TOKENS:
            raise ValueError(f"max_tokens: the prompt is {prompt_tokens} tokens, and with {max_tokens} more it "
                             f"would not fit the model's {CONTEXT_TOKENS}-token context")
        sampler = torch.Generator().manual_seed(seed) if seed is not None else None
        generated: list[int] = []
        text_so_far = ""
        cache = None  # the keys and values of every token so far: each step feeds one token
        with torch.inference_mode():
            for step in range(max_tokens):
                out = self.model(input_ids=ids, cache=cache)
                cache = out.cache
                token = _pick(out.logits[0, -1], temperature, top_p, sampler)
                if token in self.end_tokens:
                    yield Generated("", prompt_tokens, len(generated), FINISH_STOP)
                    return
                generated.append(token)
                # Decoding the whole completion each time keeps characters that span tokens
                # whole; a trailing U+FFFD is half a character, sent once complete.
                decoded = self.tokenizer.decode(generated, skip_special_tokens=True)
                complete = decoded[:-1] if decoded.endswith("\ufffd") else decoded
                last = step == max_tokens - 1
                yield Generated(complete[len(text_so_far):], prompt_tokens, len(generated),
                                FINISH_LENGTH if last else None)
                text_so_far = complete
                ids = torch.tensor([[token]])


def _pick(logits: torch.Tensor, temperature: float, top_p: float, sampler: Optional[torch.Generator]) -> int:
    """The next token: the likeliest at temperature 0, else sampled from the top-p nucleus."""
    if temperature < MIN_TEMPERATURE:  # below it, logits / temperature overflow: greedy is the limit
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p  # the smallest prefix reaching top_p
        keep[0] = True  # and at least the likeliest token, however small top_p is
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=sampler))


def _as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
