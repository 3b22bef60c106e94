"""A seeded synthetic behaviour log with the Taobao UserBehavior schema, at any scale.

:func:`generate` writes events with the columns of Taobao UserBehavior
(user, item, leaf category, behaviour, timestamp) plus the side information the
SDM and BST papers use and the public log lacks: first-level category, brand,
shop, and a user profile (age bucket, gender, purchase power). The data is made
so that a sequential recommender has something to learn, with the same rough
shape as the real log (about 100 events per user, 89% page views), and its
defaults are calibrated to the Taobao statistics that ``seqrec data stats``
reports (:data:`seqrec.data.stats.TAOBAO`): after ``seqrec data prepare``'s
10-minute sessions, session length mean 4.8 and median 2, and of the
within-session next-item targets about 66% have a category in the session
prefix, 15% only in the 7-day long-term subset and 19% in neither (measured
with the default ``prepare`` at 60k-5M rows, seeds 0-3: mean 4.67-4.96, median
2, 64-68% / 14-16% / 17-20%; ``tests/test_synth_calibration.py`` keeps them
within 25%). Below about 2,400 items (60k rows by default) the catalogue has
fewer categories, so fewer of them are new to a user.

**Catalogue.** Items fall into leaf categories (about one per 200 items, at
least 200 so that a small catalogue still has many more categories than a
user browses in a week - but at least 20 items per leaf, and at least 20
leaves, in a catalogue under 4,000 items), and leaf categories into 20-100
first-level categories. Leaf categories have Zipf popularity (exponent
``cat_zipf``) and sizes that grow with their popularity; inside a category, items have Zipf popularity too
(``item_zipf``), so item popularity is a power law overall. A brand sells in
its home category and sometimes one or two sibling leaves of the same
first-level category; inside a category a few brands hold most items. A shop
belongs to one brand and mostly sells that brand (a share ``shop_off_brand`` of
items is placed in a random shop). Each category also has an affinity for
gender, an age centre and a price level, so users with different profiles like
different categories.

**Users.** Every user has a profile (age bucket 1..7, gender 1..2, purchase
power 1..3) and 3-8 interests: leaf categories drawn from category popularity
reweighted by the profile's affinity, with Dirichlet weights, and a preferred
brand per interest (the brand of a popularity-drawn item of that category).
The first interest is there from the start; each other one is, with
probability ``interest_new``, a *new interest* that starts at a random point
of the user's sessions (the user has it from then on).
Activity is log-normal (mean ``rows / users`` events; every user has at least
one event) and the total is exactly ``rows``.

**Sessions.** A user's events are cut into sessions with heavy-tailed lengths
(Lomax with shape 1.5; mean about 5, median 2, under 1% longer than 50). A
session starts on one interest held, by weight, or, with probability
``explore``, on a random category by popularity (its *anchor*). Sessions mix
interests: every later event switches category with probability ``switch``,
and a switch returns to a category of an earlier part of the session
(``switch_revisit``), moves to an interest the user holds (``switch_interest``;
the user's long-term interests come back this way), or explores: a leaf of the
anchor's first-level category (``switch_related``) or a popular category. An
event is a one-off popular category with probability ``noise``; an event on an
interest comes from the interest's preferred brand with probability
``brand_affinity``, else from the whole category, by item popularity.
Behaviours are pv/fav/cart/buy with shares of about 89/3/5.5/2.5%. Because
interests persist, the categories of a user's next session are mostly ones the
user touched in the days before, and a switch to a category that is not in the
session yet is often to one of them: long-term behaviour predicts what the
short-term session does not, which is what SDM's gated fusion exploits.

**Time.** Sessions spread over ``days`` days from ``start_ts`` with a daily
rhythm (quiet nights, busy evenings; ``start_ts`` is taken as local midnight,
and ``synth.json`` records the matching ``tz_offset_s`` for the day split - the
default is 2017-11-25 00:00 UTC+8, the first day of the Taobao log). Gaps
inside a session are log-normal (median 30 s, never 10 minutes or more; 3% are
0 s, so timestamps tie as in real logs); gaps between sessions of a user are at
least ``session_gap`` seconds (20 minutes), usually hours. Every timestamp lies
in the window: a user whose sessions cannot fit in it (a very heavy user with
``days`` small) has its time compressed, and its gaps shrink.

**Scale and determinism.** Users are generated in chunks of about a million
events, fully vectorised with numpy, and appended to Parquet part files (a new
one every ``rows_per_file`` rows) or one CSV, so memory stays bounded at 100M
rows; only the catalogue (a few arrays per item) is held. Chunk ``k`` draws from
``numpy.random.default_rng([seed, k])``, so the same ``(seed, rows, users,
items, days, start_ts)`` give identical events whatever ``rows_per_file`` is.
Raw ids are sparse, shuffled int64 values >= 1, like real logs. Every knob
named here is in :data:`KNOBS` and recorded under ``params`` in ``synth.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from seqrec import features as F

FORMAT = "seqrec-synth"
VERSION = 1
LAYOUTS = ("parquet", "taobao-csv")
BEHAVIORS = ("pv", "fav", "cart", "buy")
ITEM_SIDE = (F.CATEGORY, F.CATE1, F.BRAND, F.SHOP)
USER_PROFILE = (F.AGE, F.GENDER, F.POWER)
CSV_NAME = "UserBehavior.csv"
EVENTS_DIR = "events"
META_NAME = "synth.json"

SCHEMA = pa.schema(
    [
        (F.USER_ID, pa.int64()),
        (F.ITEM_ID, pa.int64()),
        (F.CATEGORY, pa.int64()),
        (F.BEHAVIOR, pa.string()),
        (F.TIMESTAMP, pa.int64()),
        (F.CATE1, pa.int64()),
        (F.BRAND, pa.int64()),
        (F.SHOP, pa.int64()),
        (F.AGE, pa.int64()),
        (F.GENDER, pa.int64()),
        (F.POWER, pa.int64()),
    ]
)
CSV_COLUMNS = (F.USER_ID, F.ITEM_ID, F.CATEGORY, F.BEHAVIOR, F.TIMESTAMP)

#: Every knob of the generative model; recorded in ``synth.json`` under ``params``.
KNOBS: dict = {
    "chunk_rows": 1_000_000,  # events per user chunk (the unit of RNG streams and of memory)
    "items_per_leaf": 200,  # leaf categories ~ items / items_per_leaf ...
    "min_leaves": 200,  # ... but at least this many (users browse a few dozen a week: keep most of them new)
    "min_items_per_leaf": 20,  # ... unless the catalogue is small (at least 20 leaves all the same)
    "cate1_range": [20, 100],  # first-level categories
    "items_per_brand": 40,
    "items_per_shop": 25,
    "cat_zipf": 1.0,  # Zipf exponent of leaf-category popularity
    "item_zipf": 1.1,  # Zipf exponent of item popularity inside a category (and a brand)
    "cat_size_power": 0.6,  # category size ~ popularity ** cat_size_power
    "brand_extra_leaves": [0.5, 0.2],  # P(a brand sells in >= 1 / >= 2 sibling leaves)
    "shop_off_brand": 0.1,  # share of items put in a random shop instead of one of their brand's
    "gender_affinity": 1.0,  # strength of the per-category gender affinity
    "age_width": 1.5,  # width (in age buckets) of a category's age affinity
    "power_affinity": 0.5,  # strength of the per-category price-level affinity
    "age_probs": [0.04, 0.2, 0.3, 0.2, 0.12, 0.09, 0.05],
    "gender_probs": [0.45, 0.55],
    "power_probs": [0.3, 0.5, 0.2],
    "interests": [3, 8],  # interests per user (uniform, inclusive)
    "dirichlet_alpha": 2.0,
    "activity_sigma": 0.9,  # log-normal sigma of events per user
    "interest_new": 0.3,  # share of a user's interests (but the first) that start inside the window
    "explore": 0.1,  # share of sessions anchored on a random (popular) category instead of an interest
    "switch": 0.6,  # P(an event after a session's first switches to another category)
    "switch_revisit": 0.2,  # P(a switch returns to a category visited earlier in the session)
    "switch_interest": 0.5,  # P(a switch goes to another (or the same) interest the user holds)
    "switch_related": 0.5,  # P(an exploring switch picks a leaf of the anchor's first-level category)
    "noise": 0.1,  # share of events that are one-off popular categories
    "brand_affinity": 0.5,  # P(an on-interest event is from the interest's preferred brand)
    "session_shape": 1.5,  # Lomax shape of session length - 1
    "session_scale": 3.0,  # Lomax scale (mean ~ 0.5 + scale / (shape - 1) before the cut at a user's last event)
    "session_max": 300,
    "gap_median_s": 30.0,  # log-normal gaps inside a session ...
    "gap_sigma": 1.0,
    "gap_max_s": 540,  # ... capped well under 10 minutes
    "tie_share": 0.03,  # share of gaps inside a session that are 0 s (same-second events)
    "session_gap": 1200,  # minimum gap between sessions of a user (seconds)
    "behavior_probs": [0.89, 0.03, 0.055, 0.025],  # pv, fav, cart, buy
    # relative activity per local hour 0..23 (quiet nights, busy evenings)
    "hourly": [
        0.6, 0.35, 0.2, 0.15, 0.12, 0.15, 0.3, 0.6, 0.9, 1.0, 1.05, 1.1,
        1.15, 1.1, 1.05, 1.05, 1.1, 1.15, 1.25, 1.45, 1.6, 1.65, 1.45, 1.0,
    ],
}  # fmt: skip

_CATALOGUE_STREAM = 2**32  # RNG stream keys beyond any chunk index
_USERS_STREAM = 2**32 + 1


# --- helpers ---------------------------------------------------------------------


def _check_int(name: str, value, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}; {fix}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}; {fix}")
    return int(value)


def _sparse_ids(rng: np.random.Generator, n: int, base: int, max_step: int = 8) -> np.ndarray:
    """``n`` distinct shuffled int64 ids > ``base``, non-contiguous like raw ids."""
    ids = base + np.cumsum(rng.integers(1, max_step, size=n, dtype=np.int64))
    rng.shuffle(ids)
    return ids


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers >= 0 proportional to ``weights`` that sum to exactly ``total`` (cumulative rounding)."""
    c = np.cumsum(weights, dtype=np.float64)
    c = np.rint(c * (total / c[-1])).astype(np.int64)
    c[-1] = total
    return np.diff(c, prepend=0)


def _offsets(counts: np.ndarray) -> np.ndarray:
    """CSR offsets: group g holds [off[g], off[g + 1])."""
    off = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    return off


def _zipf_rank(n: np.ndarray, u: np.ndarray, a: float) -> np.ndarray:
    """Rank in ``[0, n)`` with P(rank = r) ~ (r + 1) ** -a (continuous inverse CDF; vectorised over n, u)."""
    n = n.astype(np.float64)
    if abs(a - 1.0) < 1e-9:
        r = np.exp(u * np.log(n + 1.0))
    else:
        b = 1.0 - a
        r = (1.0 + u * ((n + 1.0) ** b - 1.0)) ** (1.0 / b)
    rank = r.astype(np.int64) - 1
    return np.clip(rank, 0, n.astype(np.int64) - 1)


def _cdf(weights: np.ndarray) -> np.ndarray:
    """Normalised cumulative weights (the last is 1)."""
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


def _cdf_to_p(w: np.ndarray) -> np.ndarray:
    """Weights as probabilities."""
    w = w.astype(np.float64)
    return w / w.sum()


def _within_cumsum(x: np.ndarray, group: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """Cumulative sum of ``x`` restarting at each group (``group`` sorted, int64)."""
    cs = np.cumsum(x)
    first = np.flatnonzero(np.diff(group, prepend=-1))  # first element of each group
    base = np.repeat(cs[first] - x[first], np.diff(np.append(first, len(x))))
    return cs - base - (x if exclusive else 0)


# --- catalogue -------------------------------------------------------------------


class _Catalogue:
    """Items (internal index grouped by leaf category, by popularity rank inside it) and their side info."""

    def __init__(self, rng: np.random.Generator, n_items: int, k: dict):
        # at least min_leaves, but a small catalogue keeps >= min_items_per_leaf items per leaf (and >= 20 leaves)
        floor = max(20, min(k["min_leaves"], n_items // k["min_items_per_leaf"]))
        n_leaf = int(min(n_items, max(floor, round(n_items / k["items_per_leaf"]))))
        lo, hi = k["cate1_range"]
        n_cate1 = int(np.clip(n_leaf // 10, min(lo, max(1, n_leaf // 2)), hi))
        n_cate1 = min(n_cate1, n_leaf)
        self.n_items, self.n_leaf, self.n_cate1 = n_items, n_leaf, n_cate1

        # leaf categories: Zipf popularity in a random order, grouped into first-level categories
        pop = 1.0 / np.arange(1, n_leaf + 1, dtype=np.float64) ** k["cat_zipf"]
        self.cat_pop = rng.permutation(pop)
        self.cat_pop /= self.cat_pop.sum()
        leaf_cate1 = np.concatenate(
            [np.arange(n_cate1), rng.choice(n_cate1, size=n_leaf - n_cate1, p=rng.dirichlet(np.full(n_cate1, 2.0)))]
        )
        self.leaf_cate1 = rng.permutation(leaf_cate1)

        # category sizes grow with popularity; every category has at least one item
        size_w = self.cat_pop ** k["cat_size_power"] * rng.lognormal(0.0, 0.5, n_leaf)
        self.cat_n = 1 + _allocate(n_items - n_leaf, size_w)
        self.cat_off = _offsets(self.cat_n)
        item_cat = np.repeat(np.arange(n_leaf, dtype=np.int64), self.cat_n)

        # brands: a home leaf (each leaf is home to at least one brand) plus sibling leaves of the same cate1
        n_brands = int(max(n_leaf, n_items // k["items_per_brand"]))
        home = np.concatenate([rng.permutation(n_leaf), rng.choice(n_leaf, n_brands - n_leaf, p=_cdf_to_p(self.cat_n))])
        c1_order = np.argsort(self.leaf_cate1, kind="stable")
        c1_off = _offsets(np.bincount(self.leaf_cate1, minlength=n_cate1))
        pb_cat, pb_brand = [home], [np.arange(n_brands)]
        for p_extra in k["brand_extra_leaves"]:
            has = rng.random(n_brands) < p_extra
            c1 = self.leaf_cate1[home[has]]
            sib = c1_order[c1_off[c1] + (rng.random(has.sum()) * (c1_off[c1 + 1] - c1_off[c1])).astype(np.int64)]
            pb_cat.append(sib)
            pb_brand.append(np.flatnonzero(has))
        pair = np.unique(np.concatenate(pb_cat).astype(np.int64) * n_brands + np.concatenate(pb_brand))
        cb_cat, cb_brand = pair // n_brands, pair % n_brands  # sorted by category
        cb_off = _offsets(np.bincount(cb_cat, minlength=n_leaf))
        # an item's brand: a few brands of its category hold most of its items
        nb = cb_off[item_cat + 1] - cb_off[item_cat]
        j = (rng.random(n_items) ** 2 * nb).astype(np.int64)
        item_brand = cb_brand[cb_off[item_cat] + j]

        # shops: each belongs to one brand (every brand has one), more shops for bigger brands
        n_shops = int(max(n_brands, n_items // k["items_per_shop"]))
        brand_items = np.bincount(item_brand, minlength=n_brands).astype(np.float64) + 0.1
        shop_brand = np.concatenate(
            [np.arange(n_brands), rng.choice(n_brands, n_shops - n_brands, p=brand_items / brand_items.sum())]
        )
        shop_order = np.argsort(shop_brand, kind="stable")
        sb_off = _offsets(np.bincount(shop_brand, minlength=n_brands))
        ns = sb_off[item_brand + 1] - sb_off[item_brand]
        item_shop = shop_order[sb_off[item_brand] + (rng.random(n_items) * ns).astype(np.int64)]
        off_brand = rng.random(n_items) < k["shop_off_brand"]
        item_shop[off_brand] = rng.integers(0, n_shops, off_brand.sum())

        # (category, brand) groups of items, each by popularity rank, for "preferred brand" draws
        key = item_cat * n_brands + item_brand
        self.pair_items = np.argsort(key, kind="stable")  # stable: rank order inside a pair
        pkeys, pair_n = np.unique(key[self.pair_items], return_counts=True)
        self.pair_n = pair_n
        self.pair_off = _offsets(pair_n)
        self.item_pair = np.empty(n_items, np.int64)
        self.item_pair[self.pair_items] = np.repeat(np.arange(len(pkeys)), pair_n)

        # profile affinities of categories: gender, age centre, price level
        gender_aff = rng.normal(0.0, 1.0, n_leaf)
        age_centre = rng.uniform(1.0, 7.0, n_leaf)
        price = rng.uniform(1.0, 3.0, n_leaf)
        # combo = (gender-1)*21 + (age-1)*3 + (power-1): one CDF over leaves per profile (42 x n_leaf)
        g = np.repeat(np.array([1.0, -1.0]), 21)[:, None]
        a = np.tile(np.repeat(np.arange(1, 8, dtype=np.float64), 3), 2)[:, None]
        pw = np.tile(np.arange(1, 4, dtype=np.float64), 14)[:, None]
        logit = (
            k["gender_affinity"] * g * gender_aff[None, :]
            - (a - age_centre[None, :]) ** 2 / (2 * k["age_width"] ** 2)
            - k["power_affinity"] * np.abs(pw - price[None, :])
        )
        w = self.cat_pop[None, :] * np.exp(logit)
        self.profile_cdf = (np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)).ravel() + np.repeat(
            np.arange(42, dtype=np.float64), n_leaf
        )
        self.global_cdf = _cdf(self.cat_pop)
        # leaves grouped by first-level category, with cumulative popularity, for related-category draws
        self.c1_leaves = np.argsort(self.leaf_cate1, kind="stable")
        self.c1_off = _offsets(np.bincount(self.leaf_cate1, minlength=n_cate1))
        self.c1_cum = np.cumsum(self.cat_pop[self.c1_leaves])

        # raw ids
        self.item_raw = _sparse_ids(rng, n_items, 1_000)
        self.leaf_raw = _sparse_ids(rng, n_leaf, 10_000, max_step=64)
        self.cate1_raw = _sparse_ids(rng, n_cate1, 100, max_step=16)
        self.brand_raw = _sparse_ids(rng, n_brands, 100_000, max_step=16)
        self.shop_raw = _sparse_ids(rng, n_shops, 1_000_000, max_step=16)
        self.item_cat = item_cat
        # raw side info per item, one row per item so that an event needs one gather: (N, 5)
        self.item_info = np.stack(
            [
                self.item_raw,
                self.leaf_raw[item_cat],
                self.cate1_raw[self.leaf_cate1[item_cat]],
                self.brand_raw[item_brand],
                self.shop_raw[item_shop],
            ],
            axis=1,
        )
        self.n_brands, self.n_shops = n_brands, n_shops

    def sample_in_category(self, cat: np.ndarray, u: np.ndarray, a: float) -> np.ndarray:
        return self.cat_off[cat] + _zipf_rank(self.cat_n[cat], u, a)

    def sample_in_pair(self, pair: np.ndarray, u: np.ndarray, a: float) -> np.ndarray:
        return self.pair_items[self.pair_off[pair] + _zipf_rank(self.pair_n[pair], u, a)]

    def sample_global_category(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.global_cdf, u, side="right"), self.n_leaf - 1)

    def sample_related_category(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A leaf of the same first-level category as ``cat``, by popularity (may be ``cat`` itself)."""
        c1 = self.leaf_cate1[cat]
        lo, hi = self.c1_off[c1], self.c1_off[c1 + 1]  # leaves [lo, hi) of c1_leaves
        base = np.where(lo > 0, self.c1_cum[np.maximum(lo - 1, 0)], 0.0)
        m = base + u * (self.c1_cum[hi - 1] - base)
        j = np.clip(np.searchsorted(self.c1_cum, m, side="right"), lo, hi - 1)
        return self.c1_leaves[j]


# --- users and events ---------------------------------------------------------------


def _session_lengths(rng: np.random.Generator, counts: np.ndarray, k: dict) -> tuple[np.ndarray, np.ndarray]:
    """Session lengths per user (Lomax, capped), summing to ``counts``; returns (lengths, user) grouped by user.

    Each user draws its own sessions until its events are used up; the last one is cut short, and is then
    moved to a random place among the user's sessions (a rotation), so that neither a user's first nor
    last session is biased in length.
    """
    mean_len = 0.5 + k["session_scale"] / (k["session_shape"] - 1.0)
    remaining = counts.astype(np.int64).copy()
    active = np.arange(len(counts))
    out_len, out_user = [], []
    while active.size:
        m = (remaining[active] / mean_len * 1.3).astype(np.int64) + 4  # draws per active user
        du = np.repeat(active, m)
        draw = 1 + np.minimum(
            (k["session_scale"] * rng.pareto(k["session_shape"], len(du))).astype(np.int64), k["session_max"] - 1
        )
        end = _within_cumsum(draw, du)
        start = end - draw
        keep = start < remaining[du]
        ln = np.minimum(end, remaining[du]) - start
        out_len.append(ln[keep])
        out_user.append(du[keep])
        remaining[active] -= np.bincount(du[keep], weights=ln[keep], minlength=len(counts))[active].astype(np.int64)
        active = active[remaining[active] > 0]
    lens = np.concatenate(out_len)
    user = np.concatenate(out_user)
    if len(out_len) > 1:  # a few users needed another round: regroup by user, keeping draw order
        order = np.argsort(user, kind="stable")
        lens, user = lens[order], user[order]
    # rotate each user's sessions by a random number of places
    idx = _within_cumsum(np.ones(len(user), np.int64), user, exclusive=True)
    n = np.bincount(user, minlength=len(counts))
    rot = (rng.random(len(counts)) * n).astype(np.int64)
    pos = (idx + rot[user]) % n[user]
    order = np.argsort(user * (int(n.max()) + 1) + pos, kind="stable")
    return lens[order], user[order]


def _hour_cdf(days: int, hourly: list) -> tuple[np.ndarray, np.ndarray]:
    w = np.tile(np.asarray(hourly, np.float64), days)
    c = np.zeros(len(w) + 1)
    np.cumsum(w, out=c[1:])
    return c, w


def _warp(q: np.ndarray, span: np.ndarray, hc: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """Map q in [0, 1) to a time in [0, span) seconds distributed by the hourly rhythm."""
    h = np.minimum((span / 3600.0).astype(np.int64), len(hw) - 1)
    mass = hc[h] + (span / 3600.0 - h) * hw[h]  # rhythm mass in [0, span)
    m = q * mass
    hh = np.clip(np.searchsorted(hc, m, side="right") - 1, 0, len(hw) - 1)
    t = (hh + (m - hc[hh]) / hw[hh]) * 3600.0
    return np.minimum(t, span)


def _chunk_table(
    rng: np.random.Generator,
    cat: _Catalogue,
    counts: np.ndarray,
    user_raw: np.ndarray,
    days: int,
    start_ts: int,
    k: dict,
    hc: np.ndarray,
    hw: np.ndarray,
) -> dict[str, np.ndarray]:
    """Events of one chunk of users (``counts[i]`` events for user ``user_raw[i]``), grouped by user, by time."""
    n_users = len(counts)
    E = int(counts.sum())

    # profile and interests
    age = 1 + np.searchsorted(_cdf(np.asarray(k["age_probs"])), rng.random(n_users), side="right")
    gender = 1 + np.searchsorted(_cdf(np.asarray(k["gender_probs"])), rng.random(n_users), side="right")
    power = 1 + np.searchsorted(_cdf(np.asarray(k["power_probs"])), rng.random(n_users), side="right")
    age, gender, power = np.minimum(age, 7), np.minimum(gender, 2), np.minimum(power, 3)
    combo = (gender - 1) * 21 + (age - 1) * 3 + (power - 1)
    kmin, kmax = k["interests"]
    n_int = rng.integers(kmin, kmax + 1, n_users)
    q = combo[:, None] + rng.random((n_users, kmax))
    idx = np.searchsorted(cat.profile_cdf, q, side="right")
    int_cat = np.minimum(idx - combo[:, None] * cat.n_leaf, cat.n_leaf - 1)  # (U, kmax)
    pref_item = cat.sample_in_category(int_cat, rng.random((n_users, kmax)), k["item_zipf"])
    int_pair = cat.item_pair[pref_item]  # preferred brand in the interest's category
    wts = rng.gamma(k["dirichlet_alpha"], 1.0, (n_users, kmax))
    wts[np.arange(kmax)[None, :] >= n_int[:, None]] = 0.0

    # sessions: heavy-tailed lengths drawn per user until its events are used up
    user_off = _offsets(counts)
    lens, s_user = _session_lengths(rng, counts, k)  # (S,), grouped by user
    S = len(lens)
    is_start = np.zeros(E, bool)
    is_start[user_off[s_user] + _within_cumsum(lens, s_user, exclusive=True)] = True
    s_pos = np.flatnonzero(is_start)  # (S,) first event of each session
    sess_of = np.cumsum(is_start) - 1  # (E,)
    user_of = np.repeat(np.arange(n_users), counts)  # (E,)

    # interests the user has at each session: new ones start at a random point of the user's sessions
    s_rank = _within_cumsum(np.ones(S, np.int64), s_user, exclusive=True)  # (S,) session index inside the user
    phase = (s_rank + 0.5) / np.bincount(s_user, minlength=n_users)[s_user]  # (S,) in (0, 1), increasing in time
    born = np.where(rng.random((n_users, kmax)) < k["interest_new"], rng.random((n_users, kmax)), 0.0)
    born[:, 0] = 0.0  # a user's first interest is there from the start
    s_w = np.where(born[s_user] < phase[:, None], wts[s_user], 0.0)  # (S, kmax) weights of the interests held
    s_cw = np.cumsum(s_w, axis=1)
    s_cw /= s_cw[:, -1:]

    def interest_slot(sess: np.ndarray) -> np.ndarray:
        return np.minimum((rng.random(len(sess))[:, None] > s_cw[sess]).sum(axis=1), kmax - 1)

    # segments: runs of events on one category; the first of a session is its anchor (an interest, or with
    # probability ``explore`` a popular category); later ones start at a switch (probability ``switch`` per event)
    seg_start = is_start | (rng.random(E) < k["switch"])
    g_pos = np.flatnonzero(seg_start)  # (G,) first event of each segment
    G = len(g_pos)
    seg_of = np.cumsum(seg_start) - 1  # (E,)
    g_sess = sess_of[g_pos]  # (G,)
    g_first = np.flatnonzero(is_start[g_pos])  # (S,) first segment of each session
    g_j = np.arange(G) - g_first[g_sess]  # (G,) segment index inside its session
    g_slot = np.full(G, -1, np.int64)  # the interest a segment is on, -1 when exploring
    g_cat = np.zeros(G, np.int64)
    anchor = g_first
    s_explore = rng.random(S) < k["explore"]
    g_slot[anchor[~s_explore]] = interest_slot(np.flatnonzero(~s_explore))
    g_cat[anchor[s_explore]] = cat.sample_global_category(rng.random(int(s_explore.sum())))
    # a switch returns to an earlier segment (not the one just left), moves to another interest held, or explores:
    # a category related to the session's anchor (same first-level category) or a popular one
    r = rng.random(G)
    later = g_j >= 1
    revisit = later & (g_j >= 2) & (r < k["switch_revisit"])
    to_interest = later & ~revisit & (r < k["switch_revisit"] + k["switch_interest"])
    explore = later & ~revisit & ~to_interest
    g_slot[to_interest] = interest_slot(g_sess[to_interest])
    held = g_slot >= 0
    g_cat[held] = int_cat[s_user[g_sess[held]], g_slot[held]]
    ex = np.flatnonzero(explore)
    related = rng.random(len(ex)) < k["switch_related"]
    ex_anchor = g_cat[anchor[g_sess[ex[related]]]]  # anchors are resolved: interests and popular categories
    g_cat[ex[related]] = cat.sample_related_category(ex_anchor, rng.random(len(ex_anchor)))
    g_cat[ex[~related]] = cat.sample_global_category(rng.random(int((~related).sum())))
    # revisits copy an earlier segment of the session, following copies of copies back to their source
    rv = np.flatnonzero(revisit)
    src = np.arange(G)
    src[rv] = g_first[g_sess[rv]] + (rng.random(len(rv)) * (g_j[rv] - 1)).astype(np.int64)
    while True:  # pointer jumping: sources point strictly backwards, so this ends in log2(max segments) rounds
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    g_cat, g_slot = g_cat[src], g_slot[src]

    # events: a segment's category, or with probability ``noise`` a one-off popular category; events on an
    # interest come from its preferred brand with probability ``brand_affinity``
    e_cat = g_cat[seg_of]
    e_slot = g_slot[seg_of]
    noise = rng.random(E) < k["noise"]
    e_cat[noise] = cat.sample_global_category(rng.random(int(noise.sum())))
    use_brand = (~noise) & (e_slot >= 0) & (rng.random(E) < k["brand_affinity"])
    u = rng.random(E)
    item = cat.sample_in_category(e_cat, u, k["item_zipf"])
    if use_brand.any():
        pair = int_pair[user_of[use_brand], e_slot[use_brand]]
        item[use_brand] = cat.sample_in_pair(pair, u[use_brand], k["item_zipf"])
    behavior = np.searchsorted(_cdf(np.asarray(k["behavior_probs"])), rng.random(E), side="right")
    behavior = np.minimum(behavior, len(BEHAVIORS) - 1).astype(np.int8)

    # time inside sessions
    gap = np.minimum(
        rng.lognormal(np.log(k["gap_median_s"]), k["gap_sigma"], E), k["gap_max_s"]
    ).astype(np.int64)
    gap[rng.random(E) < k["tie_share"]] = 0  # double clicks: same-second events
    gap[s_pos] = 0
    cg = np.cumsum(gap)
    offset = cg - cg[s_pos][sess_of]  # (E,) seconds since the session start
    s_last = np.append(s_pos[1:], E) - 1
    s_dur = offset[s_last]  # (S,)

    # session starts: sorted draws from the daily rhythm over the window, then pushed apart so that
    # consecutive sessions of a user are >= session_gap apart, and pulled back to end inside the window
    W = days * 86400 - 1  # last second of the window (relative)
    step = s_dur + k["session_gap"]  # (S,) time a session takes before the next may start
    cs = np.cumsum(step)
    u_first = np.flatnonzero(np.diff(s_user, prepend=-1))  # (U,) first session of each user
    u_last = np.append(u_first[1:], S) - 1
    D = cs - step
    D = D - D[u_first][s_user]  # (S,) time the user's earlier sessions take
    need = (D + s_dur)[u_last]  # (U,) time all the user's sessions take
    r = np.sort(s_user + rng.random(S)) - s_user  # sorted uniforms per user
    q = _warp(r, np.full(S, float(W)), hc, hw).astype(np.int64)  # (S,) desired starts, sorted per user
    big = 4 * (W + int(need.max()) + 1)
    # start_k = D_k + max_{j<=k}(q_j - D_j) (running max inside each user, via per-user offsets) is the
    # earliest schedule >= q with the gaps kept; min(., W - need) pulls the tail back inside the window
    fwd = np.maximum.accumulate(q - D + s_user * big) - s_user * big  # (S,) nondecreasing per user
    t0 = D + np.minimum(fwd, (W - need)[s_user])
    # a user whose sessions cannot fit in the window (need > W): start at 0 and compress time to fit
    over = need > W
    if over.any():
        so, eo = over[s_user], over[user_of]
        scale = W / need.astype(np.float64)
        t0[so] = 0
        offset = offset.copy()
        offset[eo] = ((D[sess_of[eo]] + offset[eo]) * scale[user_of[eo]]).astype(np.int64)

    ts = start_ts + t0[sess_of] + offset
    info = cat.item_info[item]  # (E, 5)
    return {
        F.USER_ID: np.repeat(user_raw, counts),
        F.ITEM_ID: info[:, 0],
        F.CATEGORY: info[:, 1],
        F.BEHAVIOR: behavior,
        F.TIMESTAMP: ts.astype(np.int64),
        F.CATE1: info[:, 2],
        F.BRAND: info[:, 3],
        F.SHOP: info[:, 4],
        F.AGE: np.repeat(age.astype(np.int64), counts),
        F.GENDER: np.repeat(gender.astype(np.int64), counts),
        F.POWER: np.repeat(power.astype(np.int64), counts),
    }


# dictionary pages only where they pay (low-cardinality columns), statistics where readers filter
_PARQUET_OPTIONS = dict(
    compression="snappy",
    use_dictionary=[F.USER_ID, F.BEHAVIOR, F.CATE1, F.AGE, F.GENDER, F.POWER],
    write_statistics=[F.USER_ID, F.TIMESTAMP],
)
_BEHAVIOR_DICT = pa.array(BEHAVIORS, pa.string())


def _to_table(cols: dict[str, np.ndarray], names: tuple[str, ...]) -> pa.Table:
    arrays = []
    for name in names:
        v = cols[name]
        if name == F.BEHAVIOR:
            arrays.append(pc.take(_BEHAVIOR_DICT, pa.array(v)))
        else:
            arrays.append(pa.array(np.ascontiguousarray(v), pa.int64()))
    return pa.Table.from_arrays(arrays, schema=pa.schema([SCHEMA.field(n) for n in names]))


# --- public API -------------------------------------------------------------------


def generate(
    out_dir,
    rows: int,
    *,
    seed: int = 0,
    users: int | None = None,
    items: int | None = None,
    days: int = 9,
    start_ts: int = 1511539200,
    fmt: str = "parquet",
    rows_per_file: int = 5_000_000,
    progress: bool = True,
) -> dict:
    """Write ``rows`` synthetic events to ``out_dir`` and return the metadata also saved as ``synth.json``.

    ``fmt="parquet"`` writes ``events/part-00000.parquet``, ... (a new part every
    ``rows_per_file`` rows) with the columns of :data:`SCHEMA`; ``fmt="taobao-csv"``
    writes one headerless ``UserBehavior.csv`` with the five Taobao columns
    ``user_id,item_id,category_id,behavior_type,timestamp``. Rows are grouped by
    user, by timestamp within a user. Defaults: ``users = rows // 100``,
    ``items = clamp(rows // 25, 1000, 4_000_000)``. Existing ``events/part-*.parquet``
    files in ``out_dir`` are removed first. See the module docstring for the model.
    """
    rows = _check_int("rows", rows, 1, "pass the number of events to write, e.g. rows=1_000_000")
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    if users is None:
        users = max(1, rows // 100)
    users = _check_int("users", users, 1, "pass users >= 1 or leave it None for rows // 100")
    if users > rows:
        raise ValueError(
            f"users={users} > rows={rows}: every user has at least one event; pass users <= rows "
            "or leave users=None for rows // 100"
        )
    if items is None:
        items = int(np.clip(rows // 25, 1_000, 4_000_000))
    items = _check_int("items", items, 1, "pass items >= 1 or leave it None for clamp(rows // 25, 1000, 4_000_000)")
    days = _check_int("days", days, 1, "pass the number of days the events span, e.g. days=9")
    start_ts = _check_int("start_ts", start_ts, 0, "pass a Unix time in seconds, e.g. 1511539200 (2017-11-25 UTC+8)")
    rows_per_file = _check_int("rows_per_file", rows_per_file, 1, "pass rows_per_file >= 1, e.g. 5_000_000")
    if fmt not in LAYOUTS:
        raise ValueError(f"fmt={fmt!r} is not a known layout; pass one of {list(LAYOUTS)}")
    if out_dir is None or str(out_dir) == "":
        raise ValueError(f"out_dir={out_dir!r}: pass the folder to write the synthetic dataset to")

    k = dict(KNOBS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_NAME
    if meta_path.exists():
        meta_path.unlink()  # synth.json is written last: its presence means the data is complete

    # catalogue and per-user activity (global, small); events chunk by chunk
    catalogue = _Catalogue(np.random.default_rng([seed, _CATALOGUE_STREAM]), items, k)
    urng = np.random.default_rng([seed, _USERS_STREAM])
    activity = urng.lognormal(0.0, k["activity_sigma"], users)
    counts = 1 + _allocate(rows - users, activity)
    user_raw = _sparse_ids(urng, users, 10_000, max_step=16)
    users_per_chunk = max(1, int(round(k["chunk_rows"] * users / rows)))
    hc, hw = _hour_cdf(days, k["hourly"])

    files: list[str] = []
    written = 0
    bar = tqdm(total=rows, unit="rows", unit_scale=True, desc="synth", disable=not progress)

    writer = None
    file_rows = 0
    if fmt == "parquet":
        ev_dir = out / EVENTS_DIR
        ev_dir.mkdir(exist_ok=True)
        for stale in ev_dir.glob("part-*.parquet"):
            stale.unlink()
    else:
        csv_path = out / CSV_NAME
        writer = pacsv.CSVWriter(
            str(csv_path),
            pa.schema([SCHEMA.field(n) for n in CSV_COLUMNS]),
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
        )
        files.append(CSV_NAME)
    try:
        for ci, lo in enumerate(range(0, users, users_per_chunk)):
            hi = min(users, lo + users_per_chunk)
            cols = _chunk_table(
                np.random.default_rng([seed, ci]), catalogue, counts[lo:hi], user_raw[lo:hi], days, start_ts, k, hc, hw
            )
            if fmt == "taobao-csv":
                table = _to_table(cols, CSV_COLUMNS)
                writer.write_table(table)
                written += table.num_rows
            else:
                table = _to_table(cols, tuple(SCHEMA.names))
                pos = 0
                while pos < table.num_rows:
                    if writer is None:
                        rel = f"{EVENTS_DIR}/part-{len(files):05d}.parquet"
                        writer = pq.ParquetWriter(str(out / rel), SCHEMA, **_PARQUET_OPTIONS)
                        files.append(rel)
                        file_rows = 0
                    take = min(rows_per_file - file_rows, table.num_rows - pos)
                    writer.write_table(table.slice(pos, take))
                    pos += take
                    file_rows += take
                    if file_rows >= rows_per_file:
                        writer.close()
                        writer = None
                written += table.num_rows
            bar.update(table.num_rows)
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    assert written == rows, (written, rows)

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layout": fmt,
        "files": files,
        "rows": written,
        "users": users,
        "items": items,
        "item_side": list(ITEM_SIDE),
        "user_profile": list(USER_PROFILE),
        "behaviors": list(BEHAVIORS),
        "has_session_id": False,
        # days of the log start at start_ts (local midnight): prepare's day split should use the same clock
        "protocol_defaults": {"tz_offset_s": (-start_ts) % 86400},
        "catalogue": {
            "leaf_categories": catalogue.n_leaf,
            "first_level_categories": catalogue.n_cate1,
            "brands": catalogue.n_brands,
            "shops": catalogue.n_shops,
        },
        "params": {
            "seed": seed,
            "rows": rows,
            "users": users,
            "items": items,
            "days": days,
            "start_ts": start_ts,
            "fmt": fmt,
            "rows_per_file": rows_per_file,
            **k,
        },
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return meta
