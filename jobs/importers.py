"""Real datasets -> the `events` contract (and side features for the `items` job).

Each reader is pure: a path in, an `Imported` (events frame + item side features) out, or a
`ValueError` that names the file, the column and the fix. Mapping choices for each dataset live
here and nowhere else (shared/data/README.md suggests them; we keep them as written there).
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pinrec.core.contracts import (
    ACTION_BY_RATING,
    EVENTS_SCHEMA,
    ITEM_FEATURES_SCHEMA,
    ITEM_TYPES,
    QUERY_ACTION,
    SURFACES,
    ActionVocab,
    query_item_id,
)

MINUTE_US = 60_000_000

TRIVAGO_ITEM_ACTIONS = {
    "clickout item": "outbound_click",
    "interaction item image": "grid_click",
    "interaction item info": "long_grid_click",
    "interaction item rating": "long_grid_click",
    "interaction item deals": "long_grid_click",
    "search for item": "repin",  # explicit intent for one hotel: the closest analogue of a save
}
TRIVAGO_QUERY_ACTIONS = ("search for destination", "search for poi")
TAOBAO_ACTIONS = {"pv": "grid_click", "fav": "repin", "cart": "long_grid_click", "buy": "outbound_click"}


@dataclass(frozen=True)
class Imported:
    events: pa.Table  # EVENTS_SCHEMA
    item_features: pa.Table  # ITEM_FEATURES_SCHEMA


def _start_us(start: str) -> int:
    return int(datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) * 1_000_000


def _positions_to_us(df: pd.DataFrame, start: str) -> np.ndarray:
    """Position within each user's sequence -> one-minute steps from `start` (no timestamps)."""
    return _start_us(start) + df["position"].to_numpy(np.int64) * MINUTE_US


def _finish(df: pd.DataFrame, source: str, item_features: pa.Table | None = None) -> Imported:
    """Fill defaults, derive ids and partitions, and return the contract tables."""
    df = df.copy()
    if "query_text" not in df:
        df["query_text"] = None
    if "surface" not in df:
        df["surface"] = np.where(df["item_type"] == "query", "search", "homefeed")
    df = df.sort_values(["user_id", "ts_us"], kind="stable").reset_index(drop=True)
    ordinal = df.groupby("user_id").cumcount().to_numpy()
    # Deterministic ids: re-importing the same file gives the same event ids (idempotent loads).
    df["event_id"] = [
        f"{source}-{u}-{o}" for u, o in zip(df["user_id"].to_numpy(), ordinal)
    ]
    ts = pd.to_datetime(df["ts_us"], unit="us", utc=True)
    df["ts"] = ts
    df["ds"] = ts.dt.strftime("%Y-%m-%d")
    events = pa.Table.from_pandas(df[EVENTS_SCHEMA.names], schema=EVENTS_SCHEMA, preserve_index=False)
    if item_features is None:
        item_features = empty_item_features()
    return Imported(events, item_features)


def empty_item_features() -> pa.Table:
    return ITEM_FEATURES_SCHEMA.empty_table()


def item_features_table(item_ids, attributes=None, content=None, item_type="pin") -> pa.Table:
    n = len(item_ids)
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.int64()),
            "item_type": pa.array([item_type] * n, pa.string()),
            "attributes": pa.array(attributes if attributes is not None else [None] * n,
                                   pa.list_(pa.int64())),
            "content": pa.array(content if content is not None else [None] * n,
                                pa.list_(pa.float32())),
        },
        schema=ITEM_FEATURES_SCHEMA,
    )


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist; pass the dataset's folder or file")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: nothing to import")
    return path


# ------------------------------------------------------------------------------------------
# The S3-Rec format (Amazon Beauty, Sports, Toys; Yelp; LastFM): "user item item ..." per line,
# in time order, no timestamps; attributes in <Name>_item2attributes.json beside it.
# ------------------------------------------------------------------------------------------

# source name -> the sequence file's stem in its folder (shared/data/README.md)
S3REC_FILES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games",
               "yelp": "Yelp", "lastfm": "LastFM"}


def s3rec_files(folder: Path, source: str) -> tuple[Path, Path]:
    """(sequence file, attribute file) of an S3-Rec dataset folder; a file path is taken as the
    sequence file itself."""
    folder = Path(folder)
    if folder.is_file():
        seq = folder
    else:
        seq = folder / f"{S3REC_FILES[source]}.txt"
    return _require_file(seq, f"{source} import"), seq.with_name(f"{seq.stem}_item2attributes.json")


def read_s3rec(folder: Path, start: str = "2026-01-01", action: str = "outbound_click",
                source: str = "beauty") -> Imported:
    seq_file, attr_file = s3rec_files(folder, source)
    users, items, positions = [], [], []
    for lineno, line in enumerate(seq_file.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{seq_file}:{lineno}: expected 'user item item ...', got {line!r}")
        u = int(parts[0])
        for p, it in enumerate(parts[1:]):
            users.append(u)
            items.append(int(it))
            positions.append(p)
    df = pd.DataFrame({"user_id": users, "item_id": items, "position": positions})
    df["ts_us"] = _positions_to_us(df, start)
    df["item_type"] = "pin"
    # A review of a bought product: the lower-funnel action (shared/data/README.md).
    df["action"] = action
    features = None
    if attr_file.exists():
        attrs = json.loads(attr_file.read_text())
        ids = sorted(int(k) for k in attrs)
        features = item_features_table(ids, attributes=[attrs[str(i)] for i in ids])
    return _finish(df, source, features)


# ------------------------------------------------------------------------------------------
# trivago RecSys 2019: hotel item actions + search-for-destination/poi as query tokens.
# ------------------------------------------------------------------------------------------

def read_trivago(path: Path) -> Imported:
    path = Path(path)
    if path.is_dir():
        path = path / "trivago_val_100k.parquet"
    raw = pd.read_parquet(_require_file(path, "trivago import"))
    _require_columns(raw, path, ["user_id", "timestamp", "step", "action_type", "reference"])
    raw = raw.sort_values(["user_id", "timestamp", "step"], kind="stable")
    # trivago user ids are strings: map them to dense int64 in first-seen order (stable per file).
    user_codes = {u: i + 1 for i, u in enumerate(pd.unique(raw["user_id"]))}
    items = raw[raw["action_type"].isin(TRIVAGO_ITEM_ACTIONS)].copy()
    items = items[pd.to_numeric(items["reference"], errors="coerce").notna()]
    items["item_id"] = items["reference"].astype(np.int64)
    items["item_type"] = "pin"
    items["action"] = items["action_type"].map(TRIVAGO_ITEM_ACTIONS)
    items["query_text"] = None
    items["surface"] = "search"  # every hotel interaction on trivago follows a search
    queries = raw[raw["action_type"].isin(TRIVAGO_QUERY_ACTIONS)].copy()
    queries["query_text"] = queries["reference"].astype(str)
    queries["item_id"] = [query_item_id(t) for t in queries["query_text"]]
    queries["item_type"] = "query"
    queries["action"] = QUERY_ACTION
    queries["surface"] = "search"
    df = pd.concat([items, queries])
    df["user_id"] = df["user_id"].map(user_codes).astype(np.int64)
    # Several events share a second; `step` keeps their order within it.
    df["ts_us"] = df["timestamp"].astype(np.int64) * 1_000_000 + df["step"].astype(np.int64)
    cols = ["user_id", "item_id", "item_type", "action", "query_text", "surface", "ts_us"]
    return _finish(df[cols], "trivago", hotel_city_features(items) if "city" in items else None)


def hotel_city_features(items: pd.DataFrame) -> pa.Table:
    """Each hotel's city as its one attribute (the only item-level fact trivago's log carries).
    A hotel's events name the city of the search it was shown in; 1 % of hotels appear under two
    (a POI search near a border), so the most frequent city wins and ties go to the first seen.
    The attribute id is a stable hash of the city name, like query ids, so it is the same on
    every host and every file."""
    named = items[items["city"].notna()]
    city = (named.groupby(["item_id", "city"], sort=False).size().rename("n").reset_index()
            .sort_values(["item_id", "n"], ascending=[True, False], kind="stable")
            .drop_duplicates("item_id"))
    return item_features_table(city["item_id"].tolist(),
                               attributes=[[query_item_id(f"city:{c}")] for c in city["city"]])


# ------------------------------------------------------------------------------------------
# Taobao UserBehavior (no header): user_id, item_id, category_id, behavior, unix timestamp.
# ------------------------------------------------------------------------------------------

def read_taobao(path: Path) -> Imported:
    path = Path(path)
    if path.is_dir():
        path = path / "UserBehavior_head.csv"
    df = pd.read_csv(_require_file(path, "taobao import"), header=None,
                     names=["user_id", "item_id", "category_id", "behavior", "timestamp"])
    unknown = sorted(set(df["behavior"]) - set(TAOBAO_ACTIONS))
    if unknown:
        raise ValueError(f"{path}: column 'behavior' has unknown values {unknown}; "
                         f"expected {sorted(TAOBAO_ACTIONS)}")
    df["action"] = df["behavior"].map(TAOBAO_ACTIONS)
    df["item_type"] = "pin"
    df["ts_us"] = df["timestamp"].astype(np.int64) * 1_000_000
    cats = df.drop_duplicates("item_id")[["item_id", "category_id"]].sort_values("item_id")
    features = item_features_table(cats["item_id"].tolist(),
                                   attributes=[[int(c)] for c in cats["category_id"]])
    return _finish(df[["user_id", "item_id", "item_type", "action", "ts_us"]], "taobao", features)


# ------------------------------------------------------------------------------------------
# MovieLens-100K from inside the recbole 1.2.1 wheel (recbole itself is never installed).
# ------------------------------------------------------------------------------------------

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def fetch_recbole_wheel(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if not found:
        # --no-deps: recbole's own pins (ray<=2.6.3, colorama, tensorboard) must not enter the env.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "-d", str(cache_dir), RECBOLE_WHEEL], check=True)
        found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if not found:
        raise FileNotFoundError(f"could not download {RECBOLE_WHEEL} into {cache_dir}")
    return found[0]


def read_movielens100k(path: Path) -> Imported:
    """`path`: the recbole wheel, an extracted ml-100k.inter, or a cache folder to download into."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        path = fetch_recbole_wheel(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            text = z.read(ML100K_MEMBER).decode("utf-8")
    else:
        text = _require_file(path, "movielens100k import").read_text()
    lines = text.splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype(np.int64)
    df["action"] = df["rating"].map(lambda r: ACTION_BY_RATING[min(int(r), 5)])
    df["item_type"] = "pin"
    df["ts_us"] = df["timestamp"] * 1_000_000
    return _finish(df[["user_id", "item_id", "item_type", "action", "ts_us"]], "movielens100k")


# ------------------------------------------------------------------------------------------
# Generic CSV / Parquet: user_id,item_id [,timestamp | position] [,action,item_type,query_text]
# ------------------------------------------------------------------------------------------

GENERIC_FIX = ("the generic importer needs columns user_id,item_id (integers) and optionally "
               "timestamp (unix seconds) or position, action, item_type (pin|query), "
               "query_text, surface")


def _require_columns(df: pd.DataFrame, path: Path, cols) -> None:
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"{path}: missing required column {c!r}; found {list(df.columns)}")


def _require_int(df: pd.DataFrame, path: Path, col: str) -> pd.Series:
    s = df[col]
    if s.isna().any():
        row = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise ValueError(f"{path}: column {col!r} is empty at row {row}; every row needs a {col}")
    if pd.api.types.is_integer_dtype(s):
        return s.astype(np.int64)
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num != np.floor(num))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: column {col!r} must hold integers, found {s.iloc[row]!r} at row "
                         f"{row}; {GENERIC_FIX}")
    return num.astype(np.int64)


def read_generic(path: Path, vocab: ActionVocab, start: str = "2026-01-01",
                 default_action: str = "grid_click") -> Imported:
    path = _require_file(Path(path), "generic import")
    if path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty: nothing to import") from None
    elif path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    if df.empty:
        raise ValueError(f"{path} has a header but no rows: nothing to import")
    _require_columns(df, path, ["user_id", "item_id"])
    out = pd.DataFrame({"user_id": _require_int(df, path, "user_id")})
    out["item_type"] = df["item_type"].fillna("pin").astype(str) if "item_type" in df else "pin"
    bad_types = sorted(set(out["item_type"]) - set(ITEM_TYPES))
    if bad_types:
        raise ValueError(f"{path}: column 'item_type' has unknown values {bad_types}; "
                         f"use one of {list(ITEM_TYPES)}")
    out["query_text"] = df["query_text"].where(df["query_text"].notna(), None) \
        if "query_text" in df else None
    is_query = (out["item_type"] == "query").to_numpy()
    if is_query.any() and "query_text" not in df:
        raise ValueError(f"{path}: rows with item_type 'query' need a 'query_text' column")
    item_ids = _require_int(df, path, "item_id").to_numpy().copy()
    for i in np.flatnonzero(is_query):
        item_ids[i] = query_item_id(str(out["query_text"].iloc[i]))
    out["item_id"] = item_ids
    if "action" in df:
        actions = df["action"].fillna(default_action).astype(str)
        unknown = sorted(set(actions) - set(vocab.actions))
        if unknown:
            raise ValueError(f"{path}: column 'action' has values {unknown} outside vocabulary "
                             f"{vocab.name!r}; use one of {list(vocab.actions)} or map them first")
        out["action"] = actions.to_numpy()
    else:
        out["action"] = np.where(is_query, QUERY_ACTION, default_action)
    if ((out["action"] == QUERY_ACTION).to_numpy() != is_query).any():
        raise ValueError(f"{path}: action 'search' goes with item_type 'query' and only with it")
    if "surface" in df:
        bad = sorted(set(df["surface"].dropna()) - set(SURFACES))
        if bad:
            raise ValueError(f"{path}: column 'surface' has unknown values {bad}; "
                             f"use one of {list(SURFACES)}")
        out["surface"] = df["surface"].fillna("homefeed").to_numpy()
    if "timestamp" in df:
        out["ts_us"] = _require_int(df, path, "timestamp").to_numpy() * 1_000_000
    else:
        if "position" in df:
            out["position"] = _require_int(df, path, "position")
        else:  # file order within each user is the order of events
            out["position"] = out.groupby("user_id").cumcount()
        out["ts_us"] = _positions_to_us(out, start)
        out = out.drop(columns=["position"])
    return _finish(out, f"generic:{path.stem}")
