"""doc_links: the support bot of the essay. Suggests documentation links for a question, by
sentence embeddings (all-MiniLM-L6-v2) against a committed corpus of documentation pages.

Both endpoints are batched: concurrent questions are encoded in one call, which is where a
transformer's throughput comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from encoder import CORPUS, EMBEDDINGS, EMBEDDINGS_INFO, MODEL_NAME, corpus_digest, encode, load_encoder

MAX_TEXTS = 64  # per embed request
MAX_CHARACTERS = 2000  # per question or text; the encoder reads at most 256 word pieces anyway


@dataclass
class Question:
    question: str
    k: int = 3  # how many links, best first


@dataclass
class Link:
    title: str
    url: str
    score: float  # cosine similarity, -1 to 1


@dataclass
class Texts:
    texts: list[str]


@dataclass
class Embeddings:
    embeddings: list[list[float]]  # unit length, one per text
    dimensions: int


def _check_text(text: str, what: str) -> None:
    if not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_CHARACTERS:
        raise ValueError(f"{what} has {len(text)} characters; at most {MAX_CHARACTERS}")


class Model:
    batched_endpoints = {"predict": {"max_batch_size": 32, "max_wait_ms": 5},
                         "embed": {"max_batch_size": 16, "max_wait_ms": 5}}

    def load(self) -> None:
        self.pages = json.loads(CORPUS.read_text())
        info = json.loads(EMBEDDINGS_INFO.read_text())
        if info["corpus_sha256"] != corpus_digest(self.pages) or info["model"] != MODEL_NAME:
            raise RuntimeError("artifacts/corpus_embeddings.npy does not match artifacts/corpus.json: run "
                               "`./pants run models/doc_links/src/embed_corpus.py`")
        with EMBEDDINGS.open("rb") as f:
            self.page_embeddings = np.load(f, allow_pickle=False)
        self.encoder = load_encoder()

    def predict(self, requests: list[Question]) -> list[list[Link]]:
        """Suggest documentation links for a question, best first."""
        for r in requests:
            _check_text(r.question, "question")
            if not 1 <= r.k <= len(self.pages):
                raise ValueError(f"k is {r.k}; it must be 1 to {len(self.pages)} (the pages there are)")
        scores = encode(self.encoder, [r.question for r in requests]) @ self.page_embeddings.T
        answers = []
        for r, row in zip(requests, scores):
            best = np.argsort(-row)[: r.k]
            answers.append([Link(self.pages[i]["title"], self.pages[i]["url"], round(float(row[i]), 4))
                            for i in best])
        return answers

    def embed(self, requests: list[Texts]) -> list[Embeddings]:
        """Sentence embeddings of texts (unit length: a dot product is the cosine similarity)."""
        for r in requests:
            if not 1 <= len(r.texts) <= MAX_TEXTS:
                raise ValueError(f"texts has {len(r.texts)} items; send 1 to {MAX_TEXTS}")
            for i, text in enumerate(r.texts):
                _check_text(text, f"texts[{i}]")
        vectors = encode(self.encoder, [t for r in requests for t in r.texts])
        answers, start = [], 0
        for r in requests:
            rows = vectors[start:start + len(r.texts)]
            start += len(r.texts)
            answers.append(Embeddings([[round(float(x), 6) for x in row] for row in rows], int(vectors.shape[1])))
        return answers
