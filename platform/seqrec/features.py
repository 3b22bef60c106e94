"""Feature names and the feature spec: every column name in seqrec is declared here.

Two kinds of tables flow through seqrec:

* **events** — one row per user behaviour, as loaded from raw logs
  (``user_id, item_id, timestamp, behavior`` + optional ``session_id``, item side
  info and user profile columns, all raw values);
* **session rows** — one row per session (or per evaluation cut), written by
  ``seqrec data prepare`` and read by training and serving.

Item side features (leaf category, first-level category, brand, shop, ...) and
user profile features (age, gender, ...) differ per dataset. A dataset declares
which ones it has in its :class:`FeatureSpec`, which is stored in the prepared
dataset's manifest; code never hard-codes a side-feature name, it iterates the
spec. The column names of session rows are derived from feature names by the
functions below, never spelled out elsewhere.

Id encoding (every categorical feature): 0 = padding, 1 = unknown (a value not
seen in the training window), 2.. = known values, ordered by training-window
frequency (most frequent first), which is the order a log-uniform sampler needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- event columns -------------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"  # int64 seconds since the epoch
BEHAVIOR = "behavior"  # string: pv | fav | cart | buy (Taobao), rating (MovieLens), ...
SESSION_ID = "session_id"  # optional, set by the logging backend
ROW = "_row"  # int64 input order; ties in timestamp are ordered by it

# --- canonical side-feature names that the bundled loaders produce ------------
CATEGORY = "category_id"  # leaf category (MovieLens: the genre combination)
CATE1 = "cate1_id"  # first-level category (MovieLens: the first listed genre)
BRAND = "brand_id"
SHOP = "shop_id"
YEAR = "year_bucket"  # MovieLens: release decade
AGE = "age"
GENDER = "gender"
OCCUPATION = "occupation"
POWER = "purchase_power"

PAD = 0
UNKNOWN = 1
FIRST_CODE = 2

# --- session-row columns --------------------------------------------------------
USER_RAW = "user_raw"  # the raw user id, as given in the events
SESSION_START = "session_start"  # timestamp of the first event of the short-term session
SEQ_LEN = "seq_len"
TARGETS = "target_item_id"  # evaluation rows: deduplicated ground truth (see data.sessions)


# cascade columns (seqrec.train.cascade): per position t of a training row, the matcher's candidates after
# event t-1 and the score and rank of the item at t
CAND_ITEM = "cand_item_id"  # list<list<int32>>: per position, K item codes drawn from the matcher's top N
CAND_SCORE = "cand_match_score"  # list<list<float32>>: their matcher scores (user state · item vector)
CAND_RANK = "cand_match_rank"  # list<list<int32>>: their ranks in the matcher's list (0 = its first)
TARGET_SCORE = "target_match_score"  # list<float32>: the matcher score of the position's own item
TARGET_RANK = "target_match_rank"  # list<int32>: its rank among every item (0 = the matcher's first)
TOP_SCORE = "top_match_score"  # list<float32>: the score of the matcher's first item
CAND_COVISIT = "cand_covisit_score"  # list<list<float32>>: the candidates' co-visitation scores (seqrec.models.ranking.covisit_scores)
TARGET_COVISIT = "target_covisit_score"  # list<float32>: the position's own item's, both from the fold's item-CF table
# ... and of an evaluation row: the matcher's top N after its whole input, what the ranker re-orders
ROW_CAND_ITEM = "row_cand_item_id"  # list<int32>, best first
ROW_CAND_SCORE = "row_cand_match_score"  # list<float32>


def seq_col(feature: str) -> str:
    """Short-term session sequence of ``feature`` (list, oldest first)."""
    return f"seq_{feature}"


def long_term_col(feature: str) -> str:
    """Long-term subset L_f: most recent distinct values in the 7 days before the session (most recent first)."""
    return f"lt_{feature}"


def hist_col(feature: str) -> str:
    """The user's last behaviours before the session (BST's sequence; oldest first): item id, timestamp, behaviour."""
    return f"hist_{feature}"


@dataclass(frozen=True)
class Feature:
    """One categorical feature and the size of its embedding table (codes 0..vocab_size-1)."""

    name: str
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < FIRST_CODE:
            raise ValueError(
                f"feature {self.name!r}: vocab_size={self.vocab_size} must be >= {FIRST_CODE} "
                "(codes 0 and 1 are reserved for padding and unknown)"
            )


@dataclass(frozen=True)
class FeatureSpec:
    """What a prepared dataset holds; models build their embedding tables from it.

    ``item_features[0]`` is always the item id and ``user_features[0]`` the user id;
    the rest are side info / profile in a fixed order.
    """

    item_features: tuple[Feature, ...]
    user_features: tuple[Feature, ...]
    behavior: Feature
    has_session_id: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.item_features or self.item_features[0].name != ITEM_ID:
            raise ValueError(f"item_features must start with {ITEM_ID!r}, got {[f.name for f in self.item_features]}")
        if not self.user_features or self.user_features[0].name != USER_ID:
            raise ValueError(f"user_features must start with {USER_ID!r}, got {[f.name for f in self.user_features]}")
        names = [f.name for f in self.item_features + self.user_features] + [self.behavior.name]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")

    @property
    def item_side(self) -> tuple[Feature, ...]:
        return self.item_features[1:]

    @property
    def user_profile(self) -> tuple[Feature, ...]:
        return self.user_features[1:]

    @property
    def n_items(self) -> int:
        """Size of the item table, including padding and unknown."""
        return self.item_features[0].vocab_size

    def to_dict(self) -> dict:
        return {
            "item_features": [{"name": f.name, "vocab_size": f.vocab_size} for f in self.item_features],
            "user_features": [{"name": f.name, "vocab_size": f.vocab_size} for f in self.user_features],
            "behavior": {"name": self.behavior.name, "vocab_size": self.behavior.vocab_size},
            "has_session_id": self.has_session_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(
            item_features=tuple(Feature(**f) for f in d["item_features"]),
            user_features=tuple(Feature(**f) for f in d["user_features"]),
            behavior=Feature(**d["behavior"]),
            has_session_id=bool(d.get("has_session_id", False)),
        )
