"""Text → vectors for ``kind: text`` features: a pretrained sentence encoder, run once per dataset.

A text feature (an item's title or description, ``item.<column>``; the event's search query,
``context.<column>``) is embedded by the schema's ``text_encoder`` once per distinct text. The
vectors are cached with the data (``<data_dir>/<dataset>/text/<key>.npy``, ``key`` = the encoder's
name and settings plus a hash of the texts), so a second run reads them instead of encoding again.
The model sees a frozen (R, E) table of them and learns a projection (``features/embedding.py``).

Encoders (``text_encoder.kind``):

==========================  ========================================================================
``wordllama`` (default)     WordLlama ``l2_supercat`` (package ``wordllama==0.4.0.post1``, MIT): token
                            embeddings distilled from Llama-2 70B, average-pooled; its weights and
                            tokenizer ship *inside the wheel*, so it installs and runs offline. English
                            first: other Latin-script languages share sub-words, other scripts little.
                            ``dim``: 256 (default), or 64 / 128 (Matryoshka truncation).
``sentence_transformers``   any sentence-transformers model from a local folder or the Hugging Face
                            cache (``model: PATH_OR_NAME``), e.g. a copy of
                            ``paraphrase-multilingual-MiniLM-L12-v2`` for titles in many languages and
                            scripts. Needs ``pip install sentence-transformers``; never downloads
                            (``HF_HUB_OFFLINE=1``): fetch the model where a network is, copy the folder.
==========================  ========================================================================

Missing text (None, NaN, empty or only whitespace) is not encoded: its row is the zero vector, which
the model replaces by a learned "no text" vector; the pipeline logs how many rows had none.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path
from recfunnel.utils.text import is_missing

log = logging.getLogger(__name__)

ENCODERS = ("wordllama", "sentence_transformers")
WORDLLAMA_DIMS = (64, 128, 256)  # the wheel ships the 256-dim weights; 64 and 128 truncate them
DEFAULT_ENCODER: dict[str, Any] = {"kind": "wordllama", "model": "l2_supercat", "dim": 256, "batch_size": 256}
_PACKAGES = {"wordllama": ("wordllama", "wordllama==0.4.0.post1"),
             "sentence_transformers": ("sentence_transformers", "sentence-transformers")}


# per process: each loaded model, and the vectors of the last texts encoded one at a time (encode_one)
_MODELS: dict[tuple[str, str, int | None], Any] = {}
_TEXTS: OrderedDict[tuple[str, str, int | None, str], np.ndarray] = OrderedDict()
TEXT_MEMO_SIZE = 4096


class TextEncoder:
    """Texts → (n, E) float32 vectors, L2-normalised (cosine geometry, whatever the model's scale).

    Args:
        kind: one of ``ENCODERS``.
        model: wordllama: its configuration (``l2_supercat``); sentence_transformers: a local model
            folder or a model name already in the Hugging Face cache.
        dim: wordllama: the truncation E; sentence_transformers: ``None`` (the model's own) or the E
            it must have (checked).
        batch_size: texts per encoder call.
    """

    def __init__(self, kind: str = "wordllama", model: str | None = None, dim: int | None = None,
                 batch_size: int = 256, where: str = "text_encoder"):
        if kind not in ENCODERS:
            raise RecfunnelError(f"{where}: kind={kind!r} is not a text encoder; choose one of: {', '.join(ENCODERS)}")
        self.kind, self.batch_size, self.where = kind, int(batch_size), where
        self.model = model or (DEFAULT_ENCODER["model"] if kind == "wordllama" else None)
        if kind == "sentence_transformers" and not self.model:
            raise RecfunnelError(f"{where}: kind=sentence_transformers needs model=PATH (a local sentence-transformers "
                                 "folder, e.g. a copy of paraphrase-multilingual-MiniLM-L12-v2)")
        if kind == "wordllama":
            dim = DEFAULT_ENCODER["dim"] if dim is None else dim
            if dim not in WORDLLAMA_DIMS:
                raise RecfunnelError(f"{where}: dim={dim!r} is not one of wordllama's {WORDLLAMA_DIMS}")
        self.dim = dim
        self._impl = None
        self._loaded_as = (kind, str(self.model), dim)  # a model loaded once per process for this key (_MODELS)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "text_encoder") -> TextEncoder:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(DEFAULT_ENCODER)
        if unknown:
            raise RecfunnelError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(DEFAULT_ENCODER)}")
        return cls(**cfg, where=where)

    @property
    def key(self) -> dict[str, Any]:
        """What the vectors depend on: the encoder, its model and E (and the package's version)."""
        module, _ = _PACKAGES[self.kind]
        try:
            from importlib.metadata import version

            pkg_version = version(module.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed: encode() says so
            pkg_version = None
        return {"kind": self.kind, "model": str(self.model), "dim": self.dim, "version": pkg_version}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) non-empty strings → (n, E) float32 unit vectors."""
        if not len(texts):
            return np.zeros((0, self.dim or 0), np.float32)
        impl = self._load()
        if self.kind == "wordllama":
            vecs = np.concatenate([impl.embed(list(texts[i:i + self.batch_size]), norm=False)
                                   for i in range(0, len(texts), self.batch_size)])
        else:
            vecs = impl.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        if self.dim is not None and vecs.shape[1] != self.dim:
            raise RecfunnelError(f"{self.where}: model {self.model} gives {vecs.shape[1]}-dim vectors, but dim={self.dim}; "
                                 f"set dim: null or {vecs.shape[1]}")
        self.dim = vecs.shape[1]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def encode_one(self, text: str) -> np.ndarray:
        """(1, E) vector of one non-empty text, remembered per process (``_TEXTS``): a served
        request's query is read by several pipelines (the retriever's and the ranker's), encoded once."""
        key = (*self._loaded_as, text)
        if key in _TEXTS:
            _TEXTS.move_to_end(key)
            return _TEXTS[key]
        _TEXTS[key] = vector = self.encode([text])
        if len(_TEXTS) > TEXT_MEMO_SIZE:
            _TEXTS.popitem(last=False)
        return vector

    def _load(self):
        if self._impl is not None:
            return self._impl
        if self._loaded_as in _MODELS:  # another pipeline of this process loaded it
            self._impl = _MODELS[self._loaded_as]
            return self._impl
        module, pip_name = _PACKAGES[self.kind]
        try:
            lib = importlib.import_module(module)
        except ImportError:
            raise RecfunnelError(f"{self.where}: text encoder '{self.kind}' needs the package {pip_name}, which is not "
                                 f"installed; pip install {pip_name} (or choose text_encoder.kind: wordllama)") from None
        if self.kind == "wordllama":
            # the wheel ships l2_supercat's weights and tokenizer: point the loader at them, never download
            here = Path(lib.__file__).parent
            try:
                self._impl = lib.WordLlama.load(config=self.model, dim=256, trunc_dim=self.dim if self.dim < 256 else None,
                                                cache_dir=here, disable_download=True)
            except (FileNotFoundError, AttributeError, ValueError) as e:
                raise RecfunnelError(f"{self.where}: wordllama model {self.model!r} with dim={self.dim} is not in the "
                                     f"installed wheel ({e}); use model: l2_supercat") from None
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                self._impl = lib.SentenceTransformer(str(self.model), device="cpu")
            except (OSError, ValueError) as e:
                raise RecfunnelError(f"{self.where}: cannot load sentence-transformers model {self.model!r} offline "
                                     f"({type(e).__name__}: {e}); give model: a local folder holding the model") from None
        _MODELS[self._loaded_as] = self._impl
        return self._impl


def as_text(value: Any) -> str:
    """A column value as one string (token lists are joined by spaces)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(w) for w in value)
    return str(value).strip()


def text_table(values: Sequence[Any], encoder: TextEncoder, cache_dir: str | Path | None = None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode a column of texts once per distinct text.

    Args:
        values: (n,) column values (str, token list, or missing).
        encoder: the schema's text encoder.
        cache_dir: where encoded tables are cached (``None``: not cached).

    Returns:
        ``rows`` (n,) int64: each value's row in ``table``, 0 for missing text;
        ``table`` (R, E) float32: row 0 the zero vector ("no text"), then one unit vector per distinct text;
        the number of missing values.
    """
    missing = is_missing(values)
    texts = np.asarray([as_text(v) if not m else "" for v, m in zip(values, missing)], dtype=object)
    distinct, inverse = np.unique(texts[~missing].astype(str), return_inverse=True) if (~missing).any() else (
        np.zeros(0, dtype=str), np.zeros(0, np.int64))
    rows = np.zeros(len(values), dtype=np.int64)
    rows[~missing] = 1 + inverse.reshape(-1)
    vectors = _cached_encode(list(distinct), encoder, cache_dir)
    table = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])
    return rows, table, int(missing.sum())


def _cached_encode(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None) -> np.ndarray:
    """(len(texts), E) vectors, read from ``cache_dir`` when the same encoder encoded the same texts."""
    if cache_dir is None:
        return encoder.encode(texts)
    digest = hashlib.sha256(json.dumps({"encoder": encoder.key, "texts": texts}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{encoder.kind}_{digest}.npy"
    if path.is_file():
        try:
            vectors = np.load(path)
            if vectors.shape[0] == len(texts):
                encoder.dim = vectors.shape[1]
                return vectors
        except (OSError, ValueError):
            pass  # unreadable: encode again and replace it
    vectors = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    log.info("text: encoded %d distinct texts with %s (%s, E=%d) → %s", len(texts), encoder.kind, encoder.model,
             vectors.shape[1], path)
    return vectors
