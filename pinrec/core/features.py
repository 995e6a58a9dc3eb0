"""Item feature vectors, the same for the `items` job, training and serving.

Pins: the source's dense content vector when it has one (synthetic data; PinSage in the paper),
else a multi-hot of categorical attribute ids hashed into `dim` buckets (Beauty brands and
categories, Taobao categories), L2-normalised. Queries: hashed character trigrams of the
normalised query text (a stand-in for OmniSearchSage query embeddings). Items with no side
features get a zero vector and rely on their learned ID embedding.
"""
from __future__ import annotations

import hashlib

import numpy as np

from pinrec.core.contracts import normalise_query

FEATURE_DIM = 32


def _bucket(token: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big")
    return h % dim, (1.0 if (h >> 32) & 1 else -1.0)  # signed hashing keeps collisions unbiased


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def pin_features(attributes, content, dim: int = FEATURE_DIM) -> np.ndarray:
    if content is not None and len(content):
        v = np.asarray(content, dtype=np.float32)
        if len(v) >= dim:
            return _unit(v[:dim])
        return _unit(np.pad(v, (0, dim - len(v))))
    v = np.zeros(dim, dtype=np.float32)
    for a in attributes or ():
        b, s = _bucket(f"attr:{a}", dim)
        v[b] += s
    return _unit(v)


def shared_buckets(attribute_values, dim: int) -> tuple[int, int]:
    """(distinct attribute values, how many of them share their bucket with another value) at
    width `dim`: what `pinrec items` reports so a width can be chosen (values that share a
    bucket look alike to the item tower, apart from their signs)."""
    values = {a for attrs in attribute_values if attrs for a in attrs}
    buckets = np.array([_bucket(f"attr:{a}", dim)[0] for a in values], dtype=np.int64)
    if not len(buckets):
        return 0, 0
    return len(values), int((np.bincount(buckets, minlength=dim)[buckets] > 1).sum())


def query_features(text: str | None, dim: int = FEATURE_DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    t = f"  {normalise_query(text or '')}  "
    for i in range(len(t) - 2):
        b, s = _bucket(f"tri:{t[i:i + 3]}", dim)
        v[b] += s
    return _unit(v)


def feature_matrix(item_types, attributes, contents, query_texts, dim: int = FEATURE_DIM) -> np.ndarray:
    """[N, dim] float32 for parallel lists describing N items."""
    out = np.zeros((len(item_types), dim), dtype=np.float32)
    for i, t in enumerate(item_types):
        if t == "query":
            out[i] = query_features(query_texts[i] if query_texts is not None else None, dim)
        else:
            out[i] = pin_features(attributes[i], contents[i], dim)
    return out
