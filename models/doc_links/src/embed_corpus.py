"""Embeds the committed documentation corpus (artifacts/corpus.json) with the model's own
encoder, into artifacts/corpus_embeddings.npy and its description, corpus_embeddings.json.

Run it after editing the corpus (the model refuses embeddings that do not match it):

    ./pants run models/doc_links/src/embed_corpus.py
"""

from __future__ import annotations

import json

import numpy as np

from encoder import CORPUS, EMBEDDINGS, EMBEDDINGS_INFO, MODEL_NAME, corpus_digest, encode, load_encoder, page_text


def main() -> None:
    corpus = json.loads(CORPUS.read_text())
    embeddings = encode(load_encoder(), [page_text(p) for p in corpus]).astype(np.float32)
    with EMBEDDINGS.open("wb") as f:
        np.save(f, embeddings, allow_pickle=False)
    EMBEDDINGS_INFO.write_text(json.dumps({"model": MODEL_NAME, "corpus_sha256": corpus_digest(corpus),
                                           "pages": len(corpus), "dimensions": int(embeddings.shape[1])},
                                          indent=1) + "\n")
    print(f"embedded {len(corpus)} pages into {EMBEDDINGS} ({embeddings.shape[1]} dimensions)")


if __name__ == "__main__":
    main()
