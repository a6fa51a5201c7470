"""segment_anything: Segment-Anything served in two stages. An image is embedded once (the
expensive step: seconds on a CPU); then each prompt (points, a box, a previous mask) is a cheap
step against that embedding, answered by any worker of the server.

    POST /v1/embed      an image (raw image/png, image/jpeg or octet-stream body, or base64 in
                        JSON) -> its embedding id (the image's sha256) and size
    POST /v1/segment    an embedding id (or the image, embedded on a miss, or the embedding
                        itself) + points and/or a box -> masks (COCO run-length), scores, and a
                        handle on the best mask's low-resolution logits for the next refinement
    POST /v1/predict    image + prompts in one request
    POST /v1/embedding  the embedding itself, as a binary body (fp16, 2 MiB and a header) for
                        clients that hold it: replicas that share no memory (Lambda, several
                        ECS tasks) then need no cache

Embeddings live in the server's shared cache (ml_runtime.shared_cache: every worker sees every
entry; bounded by ML_SHARED_CACHE_BYTES, least recently used out) as fp16, 2 MiB each
(SAM_EMBEDDING_DTYPE=float32 keeps them exact, at 4 MiB). The
weights are seeded random ones of a small image encoder (weights.py): masks are meaningless,
shapes and the pipeline are real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from segment_anything import SamPredictor

from ml_runtime.errors import NotCached  # pants: no-infer-dep (the runtime is in every model)
from ml_runtime.shared_cache import SharedCache, content_key  # pants: no-infer-dep
from ml_shared.vision import Segment, decode_image, segment, segmentation
from weights import CHECKPOINT, build

ARCHITECTURE = os.environ.get("SAM_ARCH", "small")
# The checkpoint: the build-time one (artifacts_script) unless SAM_CHECKPOINT names another file,
# relative to this folder (where committed or fetched artifacts are) or absolute.
CHECKPOINT_FILE = Path(__file__).resolve().parent / os.environ.get("SAM_CHECKPOINT", str(CHECKPOINT))
# A compact embedding: this magic, a little-endian u32 header length, the JSON header (the
# embedding id, the image's and the encoder's sizes), then the (1, 256, 64, 64) features as
# little-endian float16 (or float32: the header's dtype says which).
MAGIC = b"SAM-EMB1"
# How embeddings are kept and sent: float16 halves them (2 MiB: 64 images in 128 MiB, and a
# stateless prompt fits Lambda's 6 MB payload) for masks within the tolerance the tests check.
DTYPES = {"float16": "<f2", "float32": "<f4"}
EMBEDDING_DTYPE = os.environ.get("SAM_EMBEDDING_DTYPE", "float16")
EMBEDDING_SHAPE = (1, 256, 64, 64)
LOGITS_SHAPE = (1, 256, 256)
# The requests /openapi.json shows: a 64x48 PNG with a red rectangle at (8..30, 8..40).
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAAYUlEQVR42u3ZwQnAIBAEQBVLsIgrxnItyyKswJchwTD7PTgY9rk5I"
                 "tLNKenyAAAAAHybujuM1s6/9zk1AAAAAAAAAAAAAAAAAAAAAAAAAAAAAADwdLYDxwvbhAYAAAB+AFja4gYAbqccDQAAAABJRU5ErkJggg==")
EXAMPLE_POINTS = [{"x": 19, "y": 24, "label": 1}]


@dataclass
class Point:
    x: float  # pixels, 0 <= x < width
    y: float  # pixels, 0 <= y < height
    label: int = 1  # 1: on the object, 0: not on it


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class Embedded:
    embedding_id: str  # the image's sha256: send it with prompts
    width: int
    height: int
    cached: bool  # whether the server had it already


@dataclass
class Segmented:
    embedding_id: str
    width: int
    height: int
    segments: list[Segment]  # best score first; `label` is "object"
    logits_id: str  # the best mask's low-resolution logits: `mask_input_id` of a refinement


@dataclass
class _Features:
    features: np.ndarray  # EMBEDDING_SHAPE, float16 or float32
    original_size: tuple[int, int]  # (height, width) of the image
    input_size: tuple[int, int]  # (height, width) the encoder saw before padding
    embedding_id: str = ""  # the image's sha256, as a packed embedding carries it


def pack(key: str, f: _Features) -> bytes:
    header = json.dumps({"embedding_id": key, "original_size": f.original_size, "input_size": f.input_size,
                         "shape": list(EMBEDDING_SHAPE), "dtype": f.features.dtype.str}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + f.features.tobytes()


def unpack(blob: bytes) -> _Features:
    """A compact embedding, or ValueError (a 422) saying it is not one this model made."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise ValueError("embedding: not an embedding from /v1/embedding (wrong magic)")
    (length,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4 + length
    try:
        header = json.loads(blob[len(MAGIC) + 4:start])
        key, original, size = str(header["embedding_id"]), tuple(header["original_size"]), tuple(header["input_size"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("embedding: its header is damaged") from None
    if header.get("dtype") not in DTYPES.values():
        raise ValueError(f"embedding: its dtype is {header.get('dtype')!r}, not one of {', '.join(DTYPES.values())}")
    dtype = np.dtype(header["dtype"])
    expected = int(np.prod(EMBEDDING_SHAPE)) * dtype.itemsize
    if header.get("shape") != list(EMBEDDING_SHAPE) or len(blob) - start != expected:
        raise ValueError(f"embedding: expected {EMBEDDING_SHAPE} {dtype.name} ({expected:,} bytes)")
    features = np.frombuffer(blob, dtype=dtype, offset=start).reshape(EMBEDDING_SHAPE)
    return _Features(features, (int(original[0]), int(original[1])), (int(size[0]), int(size[1])), key)


class Model:
    endpoint_examples = {
        "embed": {"image": EXAMPLE_IMAGE},
        "embedding": {"image": EXAMPLE_IMAGE},
        "segment": {"embedding_id": hashlib.sha256(base64.b64decode(EXAMPLE_IMAGE)).hexdigest(),
                    "points": EXAMPLE_POINTS, "multimask": True},
        "predict": {"image": EXAMPLE_IMAGE, "points": EXAMPLE_POINTS, "box": {"x0": 6, "y0": 6, "x1": 32, "y1": 42}},
    }

    def load(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.predictor = SamPredictor(build(ARCHITECTURE, CHECKPOINT_FILE).to(self.device).eval())
        self.cache = SharedCache.from_env()
        if EMBEDDING_DTYPE not in DTYPES:
            raise ValueError(f"SAM_EMBEDDING_DTYPE is {EMBEDDING_DTYPE!r}: one of {', '.join(DTYPES)}")
        self.dtype = np.dtype(DTYPES[EMBEDDING_DTYPE])
        print(f"segment_anything: {ARCHITECTURE} serving on {self.device}", flush=True)

    # -- endpoints --------------------------------------------------------------------------

    def embed(self, image: bytes) -> Embedded:
        """Embed an image once (the expensive step); prompts then name it by `embedding_id`."""
        key, blob, cached = self._embedded(image)
        height, width = unpack(blob).original_size
        return Embedded(key, width, height, cached)

    def embedding(self, image: bytes) -> bytes:
        """The image's compact embedding itself, as a binary body: a client keeps it and sends it
        back (base64) as `embedding` with each prompt, so no server-side state is needed
        (Lambda, several replicas). It starts with "SAM-EMB1", a little-endian u32 length and
        that many bytes of JSON (`embedding_id`, `original_size`: [height, width], ...), then
        256x64x64 float16 features (float32 with SAM_EMBEDDING_DTYPE=float32)."""
        return self._embedded(image)[1]  # the cache holds it in this compact form

    def segment(self, points: Optional[list[Point]] = None, box: Optional[Box] = None,
                embedding_id: str = "", image: Optional[bytes] = None, embedding: Optional[bytes] = None,
                mask_input_id: str = "", multimask: bool = True) -> Segmented:
        """Masks for point and/or box prompts on an embedded image: named by `embedding_id`
        (from /v1/embed), or sent as `image` (embedded on a miss) or as `embedding` (from
        /v1/embedding). `mask_input_id` (a previous answer's `logits_id`) refines that mask."""
        if embedding is not None:
            features = unpack(embedding)
            key = features.embedding_id
        elif image is not None:
            key, blob, _ = self._embedded(image)
            features = unpack(blob)
            if embedding_id and embedding_id != key:
                raise ValueError(f"embedding_id: {embedding_id} is not the sha256 of `image` ({key})")
        elif embedding_id:
            key = embedding_id
            blob = self.cache.get(key)
            if blob is None:
                raise NotCached(f"embedding {key} is not in the server's cache (never embedded, or "
                                "evicted): POST the image to /v1/embed first, or send it as `image`")
            features = unpack(blob)
        else:
            raise ValueError("give `embedding_id` (from /v1/embed), `image` or `embedding`")
        return self._segment(key, features, points or [], box, mask_input_id, multimask)

    def predict(self, image: bytes, points: Optional[list[Point]] = None, box: Optional[Box] = None,
                multimask: bool = True) -> Segmented:
        """Embed and segment in one request (the embedding is cached for later prompts too)."""
        key, blob, _ = self._embedded(image)
        return self._segment(key, unpack(blob), points or [], box, "", multimask)

    # -- the two stages -----------------------------------------------------------------------

    def _embedded(self, image: bytes) -> tuple[str, bytes, bool]:
        """The image's id, its compact embedding (from the shared cache, made on a miss) and
        whether it was cached."""
        key = content_key(image)
        blob, cached = self.cache.get_or_create(key, lambda: pack(key, self._encode(image)))
        return key, blob, cached

    def _encode(self, image: bytes) -> _Features:
        picture = np.asarray(decode_image(image))
        with torch.inference_mode():
            self.predictor.set_image(picture)
            features = self.predictor.features.cpu().numpy().astype(self.dtype)
        return _Features(features, tuple(self.predictor.original_size), tuple(self.predictor.input_size))

    def _segment(self, key: str, f: _Features, points: list[Point], box: Optional[Box],
                 mask_input_id: str, multimask: bool) -> Segmented:
        height, width = f.original_size
        coords, labels = _check_prompts(points, box, width, height)
        mask_input = self._logits(mask_input_id) if mask_input_id else None
        predictor = self.predictor
        predictor.reset_image()
        predictor.features = torch.from_numpy(f.features.astype(np.float32)).to(self.device)
        predictor.original_size, predictor.input_size = f.original_size, f.input_size
        predictor.is_image_set = True
        with torch.inference_mode():
            masks, scores, logits = predictor.predict(
                point_coords=coords, point_labels=labels,
                box=None if box is None else np.array([box.x0, box.y0, box.x1, box.y1], dtype=np.float32),
                mask_input=mask_input, multimask_output=multimask)
        best = int(np.argmax(scores))
        best_logits = logits[best:best + 1].astype("<f2").tobytes()
        logits_id = hashlib.sha256(key.encode() + best_logits).hexdigest()
        self.cache.put(logits_id, best_logits)
        return Segmented(key, width, height, segmentation(width, height, [
            segment("object", score, mask) for score, mask in zip(scores.tolist(), masks)]).segments, logits_id)

    def _logits(self, logits_id: str) -> np.ndarray:
        blob = self.cache.get(logits_id)
        if blob is None:
            raise NotCached(f"mask_input_id: logits {logits_id} are not in the server's cache (evicted, "
                            "or from another server): prompt again without it")
        return np.frombuffer(blob, dtype="<f2").reshape(LOGITS_SHAPE).astype(np.float32)


def _check_prompts(points: list[Point], box: Optional[Box], width: int,
                   height: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The point arrays SAM takes, or ValueError (a 422) naming the bad field."""
    if not points and box is None:
        raise ValueError("points, box: give at least one point or a box")
    for i, p in enumerate(points):
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise ValueError(f"points[{i}]: ({p.x}, {p.y}) is outside the {width}x{height} image")
        if p.label not in (0, 1):
            raise ValueError(f"points[{i}].label: {p.label}; 1 (on the object) or 0 (not on it)")
    if box is not None and not (0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height):
        raise ValueError(f"box: ({box.x0}, {box.y0}, {box.x1}, {box.y1}) is not a box inside the "
                         f"{width}x{height} image (x0 < x1, y0 < y1)")
    if not points:
        return None, None
    return (np.array([[p.x, p.y] for p in points], dtype=np.float32),
            np.array([p.label for p in points], dtype=np.int64))
