"""Synthetic interaction logs with planted, recoverable structure, from 1k to 10M+ events.

``generate_synthetic`` returns canonical ``Tables`` (see ``tables.py``) whose structure is known:

- **Taste clusters.** Every user and item belongs to one of ``num_clusters`` clusters (users
  uniformly at random, items in equal shares). Each event picks an item from its session's cluster
  with probability ``OWN_CLUSTER_SHARE`` and from global popularity otherwise; a session's cluster is
  its user's, except for a search session (below), whose cluster is its query's. The ground truth is
  kept as an extra ``cluster`` column on ``users`` and ``items``: it is the answer key, not a feature.
- **Popularity.** Items get popularity ranks from a random permutation and weight
  ``rank ** -zipf_exponent``; own-cluster and global draws are both proportional to that weight.
- **Side information tied to the cluster.** Users: age (int 18-70) around a cluster mean, gender
  'M'/'F' with a cluster-specific share, one of ``OCCUPATIONS`` from a cluster-specific
  distribution, a 5-digit zip whose first two digits are the cluster's home region for most users.
  Items: 1-3 of ``GENRES`` drawn from a cluster-specific distribution, a year (whole numbers
  1950-2020, float64 like the MovieLens reader) around a cluster era, and the title ``"item <id>"``.
- **Activity.** Every user has at least ``MIN_EVENTS`` events; the rest are spread by lognormal
  user weights (capped at half the catalogue per user), so the total is exactly ``num_interactions``.
  Each (user, item) pair occurs at most once, like ratings: the evaluation protocol excludes seen
  items, so a repeated item could never be hit.
- **Sessions.** A user's events come in sessions of geometric length (mean ``mean_session_length``):
  gaps inside a session are 1 s to 30 min (median 1 min), gaps between sessions are 1 h plus a
  lognormal with a median of one day. Each user's timeline starts at a random time so that it ends
  before 2021-01-01 (a timeline longer than those six years, which takes thousands of events, is
  compressed to fit); ``ts`` is int64 unix seconds in [2015-01-01, 2021-01-01). The interactions
  table is in global time order, like a log (ties keep user order).
- **Ratings.** float32 whole stars 1-5, about one star higher for items in the user's own cluster
  (also in a search session for another cluster), plus a hidden per-item quality and noise.
- **Social graph.** Each user proposes Poisson(``friends_per_user / 2``) friendships, a fraction
  ``friend_same_cluster`` of them with a uniformly drawn member of their own cluster and the rest with
  a member of another cluster; self-pairs and repeats are dropped. ``edges`` stores every friendship
  in both directions (``src -> dst`` and ``dst -> src``), sorted by (src, dst), so a user's friends are
  the rows with ``src == user`` and the mean number of friends is about ``friends_per_user``.
- **Purchases and revenue.** Every event is a click; a click becomes a purchase with probability
  ``sigmoid(PURCHASE_BASE + appeal_i - sensitivity_c(u) * log(price_i / median price)
  + OWN_CLUSTER_BONUS * [c(u) == c(i)])`` (``purchase_probability``), the median over the catalogue.
  Items get a visible ``price`` (float64, cents; lognormal with sigma ``PRICE_SIGMA`` around a
  cluster-specific median, log-uniform in ``PRICE_MEDIAN_RANGE``; clipped to ``PRICE_RANGE``). Each
  user cluster gets a price sensitivity from ``SENSITIVITY_RANGE`` (evenly spaced, in random order: some
  clusters barely care, some avoid expensive items). Item appeal is N(0, ``APPEAL_SIGMA``), except
  for clickbait: ``CLICKBAIT_SHARE`` of the ``CLICKBAIT_POOL`` most popular items (by weight) have
  appeal ``CLICKBAIT_APPEAL``, so they are clicked a lot and rarely bought. ``interactions`` gets
  ``purchase`` (float32 0/1) and ``revenue`` (float32, price x purchase). At the default config
  (10k users, 5k items, 500k events) about 23% of events are purchases. ``expected_revenue`` is the
  planted expected revenue of showing an item to a user, the oracle of a revenue ranking.
- **Search queries.** A share ``query_share`` (default 0: none) of sessions (those of the bullet
  above: a user's first event, or one after a between-session gap, starts one) are search sessions:
  each has a query for one taste cluster, the user's own with probability ``query_own_cluster``
  (default 0.5) and otherwise one of the other clusters, uniformly (the user's if there is no other).
  The session follows its query: each of its events draws its item from the query's cluster (with
  probability ``OWN_CLUSTER_SHARE``, as above), so the query tells what the user's history cannot;
  about 70% of a search session's items lie in the query's cluster (75% of draws, minus redraws of
  repeated items, plus global draws that land there). Every event of the session carries the query
  in ``query`` (pandas ``str`` dtype, missing (NaN) for the events of a session without a query) and
  its cluster in the answer key ``query_cluster`` (int64, -1 without a query). The query is a few
  noisy words describing that cluster: each cluster has a vocabulary of ``QUERY_VOCAB_SIZE`` English
  words, a theme of ``QUERY_THEMES`` (``query_vocabulary``): the theme of the genre typical of the
  cluster's items (e.g. "scary haunted creepy ..." for a horror-heavy cluster), each theme to one
  cluster while they last. A query has 2-4 words in random order, each one of the cluster's own
  (distinct) words, or with probability ``QUERY_NOISE_SHARE`` noise: a generic word
  (``QUERY_GENERIC``: "movie", "best", ...) or a word of another cluster's vocabulary; at least one
  word is the cluster's own: about 76% of a query's words are its cluster's own, 12% generic. With
  ``query_share=0`` the columns stay, with no query. Ratings and purchases keep depending on the user
  (their cluster) and the drawn item, so a search for another cluster gets lower ratings.

**Answer keys** (``ANSWER_KEY_COLUMNS``), kept in the tables so that evaluation can read the planted
truth, also from tables loaded back from the parquet cache, but never features (``features=auto``
skips them): ``users.cluster``, ``users.price_sensitivity`` (of the user's cluster), ``items.cluster``,
``items.popularity`` (the weight ``rank ** -zipf_exponent``), ``items.appeal`` and
``interactions.query_cluster`` (the cluster a query describes, and its session's items come from).

Ids are 0-based and equal to the dense index (``user_id`` 0..num_users-1, ``item_id`` 0..num_items-1).

Determinism and scale: the same arguments give identical tables. The catalogue, users and activity
come from one stream; the events of each block of ``BLOCK_USERS`` consecutive users from that block's
own stream; the graph from a third stream; prices, appeal, sensitivities and purchases from a fourth;
the queries from a fifth (``SeedSequence(seed).spawn(5)``, whose first k children are those of
``spawn(k)``), itself split in two: which sessions have a query and its cluster (three uniforms per
session, in user order) and the words. Events are generated a chunk of whole blocks at a time (at
most ``chunk_size`` events, or one block if that holds more): a chunk's session boundaries first
(from its blocks' streams, as before queries existed), then its sessions' query decisions (the next
uniforms of the decision stream), then its items, each drawn with its session's cluster. Purchases
are drawn in time order ``chunk_size`` events at a time (one uniform each) and query words query by
query in user order, about ``chunk_size`` uniforms at a time, so memory stays O(num_interactions +
chunk_size), no users x items array is ever built, and the tables do not depend on ``chunk_size``.

What the query arguments change: with ``query_share=0`` (the default), whatever
``query_own_cluster``, and likewise with ``query_own_cluster=1``, whatever ``query_share``, every
column but ``query`` and ``query_cluster`` is bit-identical to the tables the generator made before queries existed (commit
972156d). With ``query_share > 0`` the items of search sessions change by design, and with them their
ratings, purchases and revenue; a repeated item's redraw comes from its block's stream in turn, so
some items of other sessions change too, drawn from the same distribution as before (their
own-cluster share rises by a point or two: search sessions for other clusters leave more of the
user's cluster free). ``user_id``, ``ts`` (hence the row order and the sessions), the users, items
and edges never change. The graph arguments change only the edges.
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recfunnel.data.tables import Tables
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.progress import progress_bar

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western"]
OCCUPATIONS = ["administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer"]

OWN_CLUSTER_SHARE = 0.75  # probability that an event's item is drawn from the user's cluster
MIN_EVENTS = 3  # every user has at least this many events (leave-one-out needs 3)
ACTIVITY_SIGMA = 1.0  # sigma of the lognormal user activity weights
BLOCK_USERS = 512  # users per random stream; chunks are whole blocks, so chunk_size changes nothing
POPULAR_ROUNDS = 16  # redraws of a repeated item from the taste distribution before drawing uniformly
HOME_REGION_SHARE = 0.7  # users whose zip starts with their cluster's home region
GENRE_COUNT_PROBS = [0.45, 0.35, 0.2]  # P(1, 2, 3 genre draws); repeated draws merge

T_START = 1_420_070_400  # 2015-01-01 00:00:00 UTC
T_END = 1_609_459_200  # 2021-01-01 00:00:00 UTC
IN_SESSION_MEDIAN_S = 60.0
IN_SESSION_MAX_S = 1799
BETWEEN_SESSION_MIN_S = 3600
BETWEEN_SESSION_MEDIAN_S = 86_400.0

PRICE_MEDIAN_RANGE = (8.0, 80.0)  # cluster median prices, log-uniform in this range
PRICE_SIGMA = 0.7  # sigma of an item's log price around its cluster's median
PRICE_RANGE = (0.99, 999.99)  # prices are clipped to this range (and rounded to cents)
SENSITIVITY_RANGE = (0.0, 2.5)  # price sensitivities of the user clusters, evenly spaced, random order
APPEAL_SIGMA = 0.7  # sigma of the appeal of an ordinary item
CLICKBAIT_POOL = 0.2  # the most popular fifth of the catalogue (by weight) ...
CLICKBAIT_SHARE = 0.15  # ... of which this share, drawn at random, is clickbait ...
CLICKBAIT_APPEAL = -4.0  # ... with this appeal: clicked a lot, rarely bought
PURCHASE_BASE = -1.7  # logit of a purchase for appeal 0, the median price, another cluster
OWN_CLUSTER_BONUS = 0.5  # added to the logit when the item is in the user's cluster
ANSWER_KEY_COLUMNS = ("users.cluster", "users.price_sensitivity", "items.cluster", "items.popularity",
                      "items.appeal", "interactions.query_cluster", "users.taste")  # "table.column": planted truth
# (users.taste: the places generator's, src/recfunnel/data/places.py), never a feature

# Search queries. A theme per genre (same order as GENRES), then themes a cluster gets when the genres
# run out; every theme has QUERY_VOCAB_SIZE words and no word is in two themes or in QUERY_GENERIC.
QUERY_THEMES = {
    "Action": ("explosive", "fights", "chase", "stunts", "martial", "hero", "fast", "adrenaline"),
    "Adventure": ("quest", "journey", "treasure", "jungle", "expedition", "explore", "voyage", "island"),
    "Animation": ("animated", "cartoon", "pixar", "anime", "colorful", "drawn", "puppet", "claymation"),
    "Children's": ("kids", "family", "children", "bedtime", "cute", "puppy", "toddler", "playful"),
    "Comedy": ("funny", "hilarious", "laugh", "silly", "comedy", "witty", "goofy", "parody"),
    "Crime": ("crime", "heist", "gangster", "mafia", "cops", "robbery", "prison", "smuggling"),
    "Documentary": ("documentary", "biography", "nature", "wildlife", "factual", "interview", "investigative",
                    "educational"),
    "Drama": ("emotional", "moving", "tearjerker", "drama", "serious", "tragic", "grief", "intimate"),
    "Fantasy": ("magic", "dragons", "wizard", "elves", "sword", "enchanted", "fairy", "kingdom"),
    "Film-Noir": ("noir", "shadowy", "hardboiled", "smoky", "cynical", "rainy", "monochrome", "fatale"),
    "Horror": ("scary", "haunted", "creepy", "zombie", "ghost", "gory", "slasher", "nightmare"),
    "Musical": ("musical", "singing", "dance", "broadway", "songs", "choreography", "melody", "stage"),
    "Mystery": ("mystery", "detective", "whodunit", "clues", "puzzle", "secret", "sleuth", "riddle"),
    "Romance": ("romantic", "love", "wedding", "heartfelt", "couple", "dating", "passion", "kiss"),
    "Sci-Fi": ("space", "aliens", "robots", "futuristic", "spaceship", "cyberpunk", "galaxy", "dystopian"),
    "Thriller": ("thriller", "suspense", "tense", "twist", "conspiracy", "psychological", "gripping", "spy"),
    "War": ("war", "battle", "soldiers", "wwii", "army", "combat", "trenches", "military"),
    "Western": ("western", "cowboy", "outlaw", "frontier", "desert", "saloon", "sheriff", "ranch"),
    "sports": ("sports", "football", "boxing", "underdog", "team", "championship", "coach", "racing"),
    "food": ("food", "cooking", "chef", "spicy", "recipe", "bakery", "kitchen", "delicious"),
    "travel": ("travel", "roadtrip", "paris", "beach", "vacation", "tropical", "backpacking", "scenic"),
    "cozy": ("cozy", "heartwarming", "gentle", "feelgood", "comforting", "warm", "relaxing", "wholesome"),
    "history": ("historical", "medieval", "ancient", "royal", "empire", "victorian", "period", "epic"),
    "music": ("rock", "jazz", "concert", "band", "guitar", "hiphop", "punk", "rhythm"),
}
QUERY_GENERIC = ("movie", "film", "best", "good", "top", "new", "classic", "tonight")  # no cluster's own
QUERY_VOCAB_SIZE = 8  # words per cluster vocabulary (every theme's size)
QUERY_WORDS = (2, 4)  # a query has 2 to 4 words (uniformly)
QUERY_NOISE_SHARE = 0.25  # each word is noise with this probability (a query keeps >= 1 own word) ...
QUERY_GENERIC_SHARE = 0.5  # ... and a noise word is generic with this probability, else another cluster's


def generate_synthetic(num_users: int, num_items: int, num_interactions: int, *, seed: int = 0,
                       num_clusters: int = 8, zipf_exponent: float = 1.1, mean_session_length: float = 8.0,
                       friends_per_user: int = 10, friend_same_cluster: float = 0.8,
                       query_share: float = 0.0, query_own_cluster: float = 0.5, chunk_size: int = 1_000_000,
                       progress: bool = False) -> Tables:
    """Canonical tables with the planted structure of the module docstring.

    ``query_share``: the share of sessions with a search query (0 to 1; 0, the default, gives the
    tables made before queries existed); ``query_own_cluster``: the probability (0 to 1) that a
    query is for the user's own cluster rather than another one. A search session's items are drawn
    from its query's cluster (module docstring: search queries).

    Returns ``Tables`` with
    interactions (num_interactions rows): user_id int64, item_id int64, ts int64, rating float32,
    purchase float32 (0/1; every event is a click), revenue float32 (price x purchase), query (str
    dtype: the session's search query, NaN for a session without one) and the answer key
    query_cluster int64 (the cluster the query is for and its session's items are drawn from, -1
    without a query);
    users (num_users rows): user_id, age int64, gender, occupation, zip (str), and the answer keys
    cluster int64, price_sensitivity float64;
    items (num_items rows): item_id, title (str), year float64, genres (list[str]), price float64, and
    the answer keys cluster int64, popularity float64 (planted weight), appeal float64;
    edges (2 x friendships rows): src int64, dst int64, both directions of every friendship.

    Raises ``RecfunnelError`` for arguments that cannot give such tables (non-positive sizes, fewer
    than ``MIN_EVENTS`` events per user, more than half the catalogue per user, ...).
    """
    _check_args(num_users, num_items, num_interactions, seed, num_clusters, zipf_exponent,
                mean_session_length, friends_per_user, friend_same_cluster, query_share, query_own_cluster,
                chunk_size)
    # spawn(5)'s first four children are those of spawn(4): the query stream draws no other column
    static_seed, events_seed, graph_seed, purchase_seed, query_seed = np.random.SeedSequence(seed).spawn(5)
    decide_seed, words_seed = query_seed.spawn(2)
    rng = np.random.default_rng(static_seed)
    users, user_cluster = _users(rng, num_users, num_clusters)
    items, item_cluster = _items(rng, num_items, num_clusters)
    popularity = rng.permutation(num_items).astype(np.float64) + 1.0
    weight = popularity ** -zipf_exponent
    sampler = _ItemSampler(weight, item_cluster, num_clusters)
    item_quality = rng.normal(0.0, 0.4, num_items)
    counts = user_activity(rng, num_users, num_interactions, _max_events_per_user(num_items))

    block_starts = np.arange(0, num_users, BLOCK_USERS)
    block_seeds = events_seed.spawn(len(block_starts))
    bounds = _chunk_bounds(np.add.reduceat(counts, block_starts), chunk_size)
    event_end = np.cumsum(counts)
    item = np.empty(num_interactions, np.int64)
    ts = np.empty(num_interactions, np.int64)
    rating = np.empty(num_interactions, np.float32)
    session_start = np.empty(num_interactions, bool)
    # which sessions have a query, and its cluster: 3 uniforms per session, in user order, chunk by chunk
    decide = functools.partial(_query_sessions, np.random.default_rng(decide_seed), share=query_share,
                               own_share=query_own_cluster, num_clusters=num_clusters)
    session_query = []  # per chunk: (S_chunk,) query cluster of each session, -1 without a query
    for b_lo, b_hi in progress_bar(list(zip(bounds[:-1], bounds[1:])), desc="synthetic events", unit="chunk",
                                   disable=not progress):
        u_lo, u_hi = b_lo * BLOCK_USERS, min(b_hi * BLOCK_USERS, num_users)
        e_lo, e_hi = event_end[u_lo] - counts[u_lo], event_end[u_hi - 1]
        rngs = [np.random.default_rng(s) for s in block_seeds[b_lo:b_hi]]
        item[e_lo:e_hi], ts[e_lo:e_hi], rating[e_lo:e_hi], session_start[e_lo:e_hi], chunk_query = _chunk_events(
            rngs, counts[u_lo:u_hi], user_cluster[u_lo:u_hi], sampler, item_cluster, item_quality,
            mean_session_length, decide)
        session_query.append(chunk_query)

    columns = {"user_id": np.repeat(np.arange(num_users, dtype=np.int64), counts),
               "item_id": item, "ts": ts, "rating": rating}
    del item, ts, rating
    # Sessions in user order (the order of the events here).
    query_cluster = np.concatenate(session_query)
    del session_query
    query = _query_words(np.random.default_rng(words_seed), query_cluster, query_vocabulary(items), chunk_size)
    session = np.cumsum(session_start) - 1  # (E,) session of each event
    del session_start
    order = np.argsort(columns["ts"], kind="stable")
    for name in columns:  # one column at a time: peak memory is the table plus one column
        columns[name] = columns[name][order]
    session = session[order]
    del order
    catalogue_seed, purchase_events_seed = purchase_seed.spawn(2)
    price, appeal, sensitivity = _purchase_model(np.random.default_rng(catalogue_seed), weight, item_cluster,
                                                 num_clusters)
    columns["purchase"], columns["revenue"] = _purchases(
        np.random.default_rng(purchase_events_seed), columns["user_id"], columns["item_id"], user_cluster,
        item_cluster, price, appeal, sensitivity, chunk_size)
    # taken per event in arrow: pandas' str dtype without converting Python objects
    columns["query"] = pd.array(query.take(pa.array(session)), dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    columns["query_cluster"] = query_cluster[session]
    del session, query
    interactions = pd.DataFrame(columns, copy=False)
    users["price_sensitivity"] = sensitivity[user_cluster]
    items.insert(items.columns.get_loc("cluster"), "price", price)
    items["popularity"], items["appeal"] = weight, appeal
    edges = _edges(np.random.default_rng(graph_seed), user_cluster, friends_per_user, friend_same_cluster)
    return Tables(interactions=interactions, users=users, items=items, edges=edges)


def purchase_probability(tables: Tables, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(U, C) float64 planted p(purchase | click) of each item ``items[u, j]`` for user ``users[u]``.

    users: (U,) rows of ``tables.users`` (== user_id, and SplitData's dense index, for synthetic
    tables); items: (U, C) rows of ``tables.items``, -1 for an empty slot (probability 0). Reads only
    columns of the tables (``price`` and the answer keys), so it works on tables loaded from the cache.
    """
    users, items, empty = _slots(users, items)
    it = _columns(tables.items, "items", ("cluster", "price", "appeal"))
    us = _columns(tables.users, "users", ("cluster", "price_sensitivity"))
    log_rel = np.log(it["price"] / np.median(it["price"]))
    u = users[:, None]
    own = it["cluster"][items] == us["cluster"][u]
    p = _sigmoid(_purchase_logit(us["price_sensitivity"][u], own, log_rel[items], it["appeal"][items]))
    p[empty] = 0.0
    return p


def expected_revenue(tables: Tables, users: np.ndarray, items: np.ndarray,
                     num_clusters: int | None = None) -> np.ndarray:
    """(U, C) float64 planted expected revenue of showing item ``items[u, j]`` to user ``users[u]``:
    p_choice(i | u) x p(purchase | u, i) x price_i, the oracle of a revenue ranking.

    p_choice is the generator's probability that one draw for user u picks item i:
    ``OWN_CLUSTER_SHARE`` x w_i / (total w of u's cluster) [i in u's cluster] + (1 - OWN_CLUSTER_SHARE)
    x w_i / (total w), with w the ``popularity`` weights (repeats are redrawn by the generator, which
    this per-draw probability ignores): the draw of a session without a query (a search session
    draws from its query's cluster instead, ``query_cluster``). users, items as in
    ``purchase_probability``; an empty slot (-1) scores 0, below every real item (whose expected
    revenue is > 0), so sums over a slate and rankings both stay right. ``num_clusters`` (default:
    1 + the largest cluster in the tables) must exceed every cluster id. Reads only the tables'
    columns (``price`` and the answer keys).
    """
    users_, items_, empty = _slots(users, items)
    it = _columns(tables.items, "items", ("cluster", "price", "popularity"))
    user_cluster = _columns(tables.users, "users", ("cluster",))["cluster"]
    largest = int(max(it["cluster"].max(initial=0), user_cluster.max(initial=0)))
    if num_clusters is None:
        num_clusters = largest + 1
    elif num_clusters <= largest:
        raise RecfunnelError(f"num_clusters={num_clusters} but the tables hold cluster {largest}")
    w = it["popularity"]
    cluster_total = np.bincount(it["cluster"], weights=w, minlength=num_clusters)
    own = it["cluster"][items_] == user_cluster[users_][:, None]
    wi = w[items_]
    p_choice = (1.0 - OWN_CLUSTER_SHARE) * wi / w.sum() + np.where(
        own, OWN_CLUSTER_SHARE * wi / cluster_total[it["cluster"][items_]], 0.0)
    out = p_choice * purchase_probability(tables, users_, items_) * it["price"][items_]
    out[empty] = 0.0
    return out


def query_vocabulary(items: pd.DataFrame) -> list[tuple[str, ...]]:
    """The search-query vocabulary of each taste cluster: entry c holds cluster c's
    ``QUERY_VOCAB_SIZE`` words (a theme of ``QUERY_THEMES``).

    The genre themes go to the clusters greedily: the (cluster, genre) pair with the largest share of
    the cluster's items listing the genre first, each cluster and genre once, so a cluster's words
    match the genre typical of its items. Clusters left over (more clusters than genres) take the
    other themes in order and, past those, the first half of one theme and the second half of
    another (pairs of themes in order, repeating past the last pair): their vocabularies overlap.
    Reads only the items' ``cluster`` and ``genres`` columns, so it works on cached tables too.
    """
    it = _columns(items, "items", ("cluster", "genres"))
    cluster = it["cluster"].astype(np.int64)
    num_clusters, num_genres = int(cluster.max(initial=-1)) + 1, len(GENRES)
    lengths = np.fromiter(map(len, it["genres"]), np.int64, len(cluster))
    genre = pd.Index(GENRES).get_indexer(list(itertools.chain.from_iterable(it["genres"])))
    known = genre >= 0
    pair = np.repeat(cluster, lengths)[known] * num_genres + genre[known]
    share = np.bincount(pair, minlength=num_clusters * num_genres).reshape(num_clusters, num_genres)
    share = share / np.maximum(np.bincount(cluster, minlength=num_clusters), 1)[:, None]
    theme = np.full(num_clusters, -1, np.int64)
    for _ in range(min(num_clusters, num_genres)):
        c, g = np.unravel_index(np.argmax(share), share.shape)
        theme[c] = g
        share[c, :] = share[:, g] = -1.0
    themes = list(QUERY_THEMES.values())
    left = np.flatnonzero(theme < 0)
    extra = min(len(left), len(themes) - num_genres)
    theme[left[:extra]] = np.arange(num_genres, num_genres + extra)
    vocab = [themes[t] for t in theme.tolist()]
    half = QUERY_VOCAB_SIZE // 2
    pairs = list(itertools.combinations(range(len(themes)), 2))
    for j, c in enumerate(left[extra:].tolist()):
        a, b = pairs[j % len(pairs)]
        vocab[c] = themes[a][:half] + themes[b][half:]
    return vocab


def _slots(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U,) users, (U, C) items with empty slots (-1) pointed at row 0, and the (U, C) empty mask."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if users.ndim != 1 or items.ndim != 2 or len(items) != len(users):
        raise RecfunnelError(f"expected users (U,) and items (U, C), got shapes {users.shape} and {items.shape}")
    empty = items < 0
    return users, np.where(empty, 0, items), empty


def _columns(df: pd.DataFrame, table: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named columns of a synthetic ``table`` as arrays; an error naming those it lacks."""
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise RecfunnelError(f"the {table} table lacks {missing}: the planted truth needs tables made by "
                             "generate_synthetic (regenerate older cached synthetic tables)")
    return {c: df[c].to_numpy() for c in names}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _purchase_logit(sensitivity: np.ndarray, own: np.ndarray, log_rel_price: np.ndarray,
                    appeal: np.ndarray) -> np.ndarray:
    """Logit of p(purchase | click); arguments broadcast (see the module docstring)."""
    return PURCHASE_BASE + appeal - sensitivity * log_rel_price + OWN_CLUSTER_BONUS * own


def _purchase_model(rng: np.random.Generator, weight: np.ndarray, item_cluster: np.ndarray,
                    num_clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(I,) prices, (I,) appeal and (K,) price sensitivity of each user cluster."""
    num_items = len(weight)
    log_median = rng.uniform(*np.log(PRICE_MEDIAN_RANGE), num_clusters)
    price = np.exp(log_median[item_cluster] + PRICE_SIGMA * rng.standard_normal(num_items))
    price = np.clip(np.round(price, 2), *PRICE_RANGE)
    sensitivity = rng.permutation(np.linspace(*SENSITIVITY_RANGE, num_clusters))
    appeal = APPEAL_SIGMA * rng.standard_normal(num_items)
    pool = np.argsort(-weight, kind="stable")[:int(np.ceil(CLICKBAIT_POOL * num_items))]
    bait = rng.choice(np.sort(pool), int(round(CLICKBAIT_SHARE * len(pool))), replace=False)
    appeal[bait] = CLICKBAIT_APPEAL
    return price, appeal, sensitivity


def _purchases(rng: np.random.Generator, user: np.ndarray, item: np.ndarray, user_cluster: np.ndarray,
               item_cluster: np.ndarray, price: np.ndarray, appeal: np.ndarray, sensitivity: np.ndarray,
               chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(E,) purchase and revenue (float32) of events (user, item (E,)), in their order, ``chunk_size``
    at a time (one uniform per event, so the result does not depend on ``chunk_size``)."""
    log_rel = np.log(price / np.median(price))
    purchase = np.empty(len(user), np.float32)
    revenue = np.empty(len(user), np.float32)
    for lo in range(0, len(user), chunk_size):
        u, i = user[lo:lo + chunk_size], item[lo:lo + chunk_size]
        c = user_cluster[u]
        p = _sigmoid(_purchase_logit(sensitivity[c], item_cluster[i] == c, log_rel[i], appeal[i]))
        bought = rng.random(len(u)) < p
        purchase[lo:lo + chunk_size] = bought
        revenue[lo:lo + chunk_size] = np.where(bought, price[i], 0.0)
    return purchase, revenue


def _query_sessions(rng: np.random.Generator, user_cluster: np.ndarray, *, share: float, own_share: float,
                    num_clusters: int) -> np.ndarray:
    """(S,) query cluster of sessions whose users are in ``user_cluster`` (S,), -1 without a query.

    A session has a query with probability ``share``; the query's cluster is the user's with
    probability ``own_share``, else one of the other clusters uniformly (the user's if it is the only
    one). Three uniforms per session whatever the arguments (has a query, own cluster, which other),
    so consecutive calls on consecutive sessions give what one call on all of them gives.
    """
    u = rng.random((len(user_cluster), 3))
    other = (user_cluster + 1 + (u[:, 2] * (num_clusters - 1)).astype(np.int64)) % num_clusters
    cluster = np.where(u[:, 1] < own_share, user_cluster, other)
    return np.where(u[:, 0] < share, cluster, -1).astype(np.int64)


def _query_words(rng: np.random.Generator, query_cluster: np.ndarray, vocab: list[tuple[str, ...]],
                 chunk_size: int) -> pa.Array:
    """(S,) query text (arrow large_string, null for a session without a query) of sessions whose
    query describes cluster ``query_cluster`` (S,) (-1: no query); ``vocab`` as made by
    ``query_vocabulary``.

    A query has 2-4 words (``QUERY_WORDS``), each noise with probability ``QUERY_NOISE_SHARE`` (a
    generic word with probability ``QUERY_GENERIC_SHARE``, else a word of another cluster's
    vocabulary), else a word of the cluster's own vocabulary; at least one word is the cluster's own;
    own words are distinct, generic words too. Every word slot draws the same way, so the words come
    in random order. The stream gives one row of uniforms per query session, ``chunk_size // width``
    rows at a time, so memory is O(S + chunk_size) and the result does not depend on ``chunk_size``.
    """
    num_sessions, num_clusters, size = len(query_cluster), len(vocab), QUERY_VOCAB_SIZE
    table = pa.array([w for words in vocab for w in words] + list(QUERY_GENERIC), type=pa.large_string())
    generic_at, num_generic = num_clusters * size, len(QUERY_GENERIC)  # word index of generic word 0
    fewest, most = QUERY_WORDS
    has = np.flatnonzero(query_cluster >= 0)
    # columns of a query's uniforms: length, forced own slot, then per slot: noise, generic, other
    # cluster, other word, own word, generic word
    width = 2 + 6 * most
    rows = max(1, chunk_size // width)
    texts = [pa.array([], pa.large_string())]
    for lo in range(0, len(has), rows):
        sel = has[lo:lo + rows]
        u = rng.random((len(sel), width))
        slot_u = u[:, 2:].reshape(len(sel), 6, most)
        c = query_cluster[sel][:, None]
        n = fewest + (u[:, 0] * (most - fewest + 1)).astype(np.int64)  # (m,) words
        noise = slot_u[:, 0] < QUERY_NOISE_SHARE  # (m, most)
        generic = (slot_u[:, 1] < QUERY_GENERIC_SHARE) | (num_clusters == 1)
        other = (c + 1 + (slot_u[:, 2] * (num_clusters - 1)).astype(np.int64)) % num_clusters
        other_word = other * size + (slot_u[:, 3] * size).astype(np.int64)
        own = c * size + _distinct(slot_u[:, 4], size)
        gen = generic_at + _distinct(slot_u[:, 5], num_generic)
        used = np.arange(most) < n[:, None]
        all_noise = np.flatnonzero(~(used & ~noise).any(axis=1))
        noise[all_noise, (u[all_noise, 1] * n[all_noise]).astype(np.int64)] = False
        word = np.where(noise, np.where(generic, gen, other_word), own)  # (m, most) word indices
        slots = [table.take(pa.array(word[:, j], mask=~used[:, j])) for j in range(most)]  # null: unused
        texts.append(pc.binary_join_element_wise(*slots, pa.scalar(" ", pa.large_string()),
                                                 null_handling="skip"))
    which = np.full(num_sessions, -1, np.int64)  # (S,) row of the session's query in ``texts``
    which[has] = np.arange(len(has))
    return pa.concat_arrays(texts).take(pa.array(which, mask=which < 0))


def _distinct(u: np.ndarray, size: int) -> np.ndarray:
    """(m, k) distinct draws per row from range(size) (k <= size), from uniforms ``u`` (m, k): column j
    is the r-th value unused by columns < j, r uniform in range(size - j) (no per-row sort)."""
    out = np.empty(u.shape, np.int64)
    for j in range(u.shape[1]):
        rank = (u[:, j] * (size - j)).astype(np.int64)
        w = rank
        for _ in range(j):  # w = rank + #{earlier <= w}: a fixed point after at most j steps
            w = rank + (out[:, :j] <= w[:, None]).sum(axis=1)
        out[:, j] = w
    return out


def _check_args(num_users, num_items, num_interactions, seed, num_clusters, zipf_exponent,
                mean_session_length, friends_per_user, friend_same_cluster, query_share, query_own_cluster,
                chunk_size) -> None:
    def integer(name: str, value, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise RecfunnelError(f"{name} must be an integer >= {low}, got {value!r}")

    def real(name: str, value, low: float, high: float = np.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
            raise RecfunnelError(f"{name} must be a number in [{low}, {high}], got {value!r}")

    for name, value in (("num_users", num_users), ("num_items", num_items),
                        ("num_interactions", num_interactions), ("num_clusters", num_clusters),
                        ("chunk_size", chunk_size)):
        integer(name, value, 1)
    integer("seed", seed, 0)
    integer("friends_per_user", friends_per_user, 0)
    real("zipf_exponent", zipf_exponent, 0.0, 10.0)
    real("mean_session_length", mean_session_length, 1.0)
    real("friend_same_cluster", friend_same_cluster, 0.0, 1.0)
    real("query_share", query_share, 0.0, 1.0)
    real("query_own_cluster", query_own_cluster, 0.0, 1.0)
    if num_items < MIN_EVENTS:
        raise RecfunnelError(f"num_items={num_items} is too small: every user needs {MIN_EVENTS} distinct items")
    if num_clusters > num_items:
        raise RecfunnelError(f"num_clusters={num_clusters} exceeds num_items={num_items}: "
                             "every cluster needs at least one item")
    if num_interactions < MIN_EVENTS * num_users:
        raise RecfunnelError(
            f"num_interactions={num_interactions} is below {MIN_EVENTS} per user "
            f"({MIN_EVENTS * num_users} for num_users={num_users}); leave-one-out needs {MIN_EVENTS} events "
            "per user: raise num_interactions or lower num_users")
    most = num_users * _max_events_per_user(num_items)
    if num_interactions > most:
        raise RecfunnelError(
            f"num_interactions={num_interactions} is too dense for num_users={num_users} and "
            f"num_items={num_items}: a user rates at most half the catalogue, so at most {most} events")


def _max_events_per_user(num_items: int) -> int:
    return max(MIN_EVENTS, num_items // 2)


def _users(rng: np.random.Generator, num_users: int, num_clusters: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Users table and (num_users,) cluster of each user; demographics depend on the cluster."""
    cluster = rng.integers(num_clusters, size=num_users)
    age_center = rng.uniform(22.0, 55.0, num_clusters)
    male_share = rng.uniform(0.15, 0.85, num_clusters)
    occupation_probs = rng.dirichlet(np.full(len(OCCUPATIONS), 0.3), num_clusters)  # (K, 21)
    home_region = rng.integers(100, size=num_clusters)

    age = np.clip(np.rint(rng.normal(age_center[cluster], 8.0)), 18, 70).astype(np.int64)
    gender = np.where(rng.random(num_users) < male_share[cluster], "M", "F")
    occupation = np.array(OCCUPATIONS)[_categorical(rng, occupation_probs, cluster)]
    at_home = rng.random(num_users) < HOME_REGION_SHARE
    region = np.where(at_home, home_region[cluster], rng.integers(100, size=num_users))
    zip_code = _digits(region * 1000 + rng.integers(1000, size=num_users), 5)
    users = pd.DataFrame({"user_id": np.arange(num_users, dtype=np.int64), "age": age, "gender": gender,
                          "occupation": occupation, "zip": zip_code, "cluster": cluster})
    return users, cluster


def _items(rng: np.random.Generator, num_items: int, num_clusters: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Items table and (num_items,) cluster of each item (equal shares); genres and year follow it."""
    cluster = rng.permutation(np.arange(num_items) % num_clusters)
    era = rng.uniform(1965.0, 2012.0, num_clusters)
    concentrated = rng.dirichlet(np.full(len(GENRES), 0.3), num_clusters)
    genre_probs = 0.85 * concentrated + 0.15 / len(GENRES)  # (K, 18): every genre stays possible

    year = np.clip(np.rint(rng.normal(era[cluster], 8.0)), 1950, 2020)
    draws = np.stack([_categorical(rng, genre_probs, cluster) for _ in GENRE_COUNT_PROBS], axis=1)  # (I, 3)
    num_draws = rng.choice(np.arange(1, len(GENRE_COUNT_PROBS) + 1), size=num_items, p=GENRE_COUNT_PROBS)
    keep = np.arange(draws.shape[1]) < num_draws[:, None]
    keep[:, 1] &= draws[:, 1] != draws[:, 0]
    keep[:, 2] &= (draws[:, 2] != draws[:, 0]) & (draws[:, 2] != draws[:, 1])
    names = np.array(GENRES, dtype=object)[draws].tolist()
    genres = [[g for g, k in zip(row, row_keep) if k] for row, row_keep in zip(names, keep.tolist())]
    items = pd.DataFrame({"item_id": np.arange(num_items, dtype=np.int64),
                          "title": [f"item {i}" for i in range(num_items)],
                          "year": year, "genres": genres, "cluster": cluster})
    return items, cluster


def _categorical(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n,) draws: entry j is a column index drawn from the distribution ``probs[rows[j]]`` (R, C)."""
    num_rows, num_cols = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    flat = (cdf + np.arange(num_rows)[:, None]).ravel()  # row r's cdf shifted into (r, r + 1]
    flat[num_cols - 1::num_cols] = np.arange(1, num_rows + 1)
    pos = np.searchsorted(flat, rows + rng.random(len(rows)), side="right") - rows * num_cols
    return np.clip(pos, 0, num_cols - 1)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) zero-padded decimal strings of non-negative ints below 10**width."""
    powers = 10 ** np.arange(width - 1, -1, -1)
    chars = (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)  # (n, width)
    return chars.view(f"S{width}").ravel().astype(f"U{width}")


def user_activity(rng: np.random.Generator, num_users: int, total: int, cap: int) -> np.ndarray:
    """(num_users,) events per user: >= MIN_EVENTS, <= cap, lognormal-skewed, summing to ``total``."""
    weight = rng.lognormal(0.0, ACTIVITY_SIGMA, num_users)
    counts = MIN_EVENTS + rng.multinomial(total - MIN_EVENTS * num_users, weight / weight.sum())
    while (excess := int(np.maximum(counts - cap, 0).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, weight, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _chunk_bounds(block_events: np.ndarray, chunk_size: int) -> list[int]:
    """Block boundaries of chunks: consecutive blocks up to ``chunk_size`` events (at least one block)."""
    bounds, total = [0], 0
    for b, n in enumerate(block_events.tolist()):
        if total and total + n > chunk_size:
            bounds.append(b)
            total = 0
        total += n
    bounds.append(len(block_events))
    return bounds


class _ItemSampler:
    """Maps uniforms to items: own cluster with probability OWN_CLUSTER_SHARE, else the whole catalogue.

    Both draws are proportional to ``weight`` (num_items,). The per-cluster distributions are stored
    as one array of CDFs, cluster c's shifted into (c, c + 1], so one searchsorted serves all clusters.
    """

    def __init__(self, weight: np.ndarray, item_cluster: np.ndarray, num_clusters: int):
        self.global_cdf = np.cumsum(weight) / weight.sum()
        self.global_cdf[-1] = 1.0
        self.by_cluster = np.argsort(item_cluster, kind="stable")  # (I,) items grouped by cluster
        sorted_cluster = item_cluster[self.by_cluster]
        self.start = np.searchsorted(sorted_cluster, np.arange(num_clusters + 1))  # (K + 1,)
        w = weight[self.by_cluster]
        totals = np.add.reduceat(w, self.start[:-1])
        before = np.cumsum(totals) - totals
        self.cluster_cdf = sorted_cluster + (np.cumsum(w) - before[sorted_cluster]) / totals[sorted_cluster]
        self.cluster_cdf[self.start[1:] - 1] = np.arange(1, num_clusters + 1)

    def draw(self, cluster: np.ndarray, u_own: np.ndarray, u_pick: np.ndarray) -> np.ndarray:
        """(n,) items for events of users in ``cluster`` (n,), from uniforms ``u_own``, ``u_pick`` (n,)."""
        own = u_own < OWN_CLUSTER_SHARE
        out = np.empty(len(cluster), np.int64)
        pos = np.searchsorted(self.global_cdf, u_pick[~own], side="right")
        out[~own] = np.minimum(pos, len(self.global_cdf) - 1)
        c = cluster[own]
        pos = np.searchsorted(self.cluster_cdf, c + u_pick[own], side="right")
        out[own] = self.by_cluster[np.minimum(pos, self.start[c + 1] - 1)]  # pos >= start[c] already
        return out


def _draw(rngs: list[np.random.Generator], counts: np.ndarray,
          fn: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
    """Concatenation of ``fn(rngs[b], counts[b])``: block b's values always come from block b's stream."""
    return np.concatenate([fn(rng, n) for rng, n in zip(rngs, counts.tolist())])


def _chunk_events(rngs: list[np.random.Generator], counts: np.ndarray, user_cluster: np.ndarray,
                  sampler: _ItemSampler, item_cluster: np.ndarray, item_quality: np.ndarray,
                  mean_session_length: float, decide: Callable[[np.ndarray], np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events of one chunk of users (whole blocks; ``rngs`` has one generator per block).

    counts, user_cluster: (n_users,). ``decide`` maps the (S,) user clusters of the chunk's sessions
    (in order) to their (S,) query clusters, -1 for a session without a query (``_query_sessions``).
    Returns item (E,) int64, ts (E,) int64, rating (E,) float32, new_session (E,) bool (the event
    starts a session: a user's first event, or one after a between-session gap) and the (S,) query
    clusters, with E = counts.sum(), events grouped by user in chunk order and in time order within
    each user, S = new_session.sum().

    Sessions and queries come first; then every event draws its item from its session's cluster (the
    query's, else the user's). The items are drawn in slots and shuffled within users into time
    order (slot ``order[k]`` becomes event k), so slot ``order[k]`` draws with event k's cluster.
    Without a query session every cluster is the user's: the draws are those made before queries.
    """
    n_users = len(counts)
    local = np.repeat(np.arange(n_users), counts)  # (E,) user index within the chunk
    starts = np.cumsum(counts) - counts  # (n_users,) first event of each user
    block_users = np.bincount(np.arange(n_users) // BLOCK_USERS)
    block_events = np.add.reduceat(counts, np.arange(0, n_users, BLOCK_USERS))
    uniform = _draw(rngs, block_events, lambda r, n: r.random((n, 4)))  # own, pick, shuffle, new session
    normal = _draw(rngs, block_events, lambda r, n: r.standard_normal((n, 2)))  # gap, rating
    u_start = _draw(rngs, block_users, lambda r, n: r.random(n))
    cluster = user_cluster[local]

    new_session = uniform[:, 3] < 1.0 / mean_session_length
    new_session[starts] = True
    query_cluster = decide(cluster[new_session])  # (S,)
    # Redrawn slots sit late in a user's sequence; shuffling within users removes that position bias.
    shuffle_key = (local << 32) | (uniform[:, 2] * 2.0 ** 32).astype(np.int64)
    order = np.argsort(shuffle_key, kind="stable")
    del shuffle_key
    slot_cluster = cluster
    if (query_cluster >= 0).any():
        event_query = query_cluster[np.cumsum(new_session) - 1]  # (E,) in time order
        slot_cluster = np.empty_like(cluster)
        slot_cluster[order] = np.where(event_query >= 0, event_query, cluster)
        del event_query
    item = sampler.draw(slot_cluster, uniform[:, 0], uniform[:, 1])
    _redraw_repeats(item, local, slot_cluster, sampler, rngs)
    del slot_cluster
    item = item[order]
    del order

    in_session = np.minimum(np.rint(np.exp(np.log(IN_SESSION_MEDIAN_S) + normal[:, 0])), IN_SESSION_MAX_S)
    between = BETWEEN_SESSION_MIN_S + np.rint(np.exp(np.log(BETWEEN_SESSION_MEDIAN_S) + 1.2 * normal[:, 0]))
    gap = np.where(new_session, between, np.maximum(in_session, 1.0))
    gap[starts] = 0.0
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[starts], counts)
    span = offset[starts + counts - 1]  # (n_users,) seconds from first to last event
    window = T_END - 1 - T_START
    shrink = np.minimum(1.0, window / np.maximum(span, 1.0))  # only for timelines longer than the window
    offset = np.floor(offset * np.repeat(shrink, counts))
    first = T_START + np.floor(u_start * (window - np.minimum(span, window)))
    ts = (np.repeat(first, counts) + offset).astype(np.int64)

    own = item_cluster[item] == cluster  # the user's taste rates, also in a search for another cluster
    stars = 2.9 + 1.1 * own + item_quality[item] + 0.9 * normal[:, 1]
    rating = np.clip(np.rint(stars), 1, 5).astype(np.float32)
    return item, ts, rating, new_session, query_cluster


def _redraw_repeats(item: np.ndarray, local: np.ndarray, cluster: np.ndarray, sampler: _ItemSampler,
                    rngs: list[np.random.Generator]) -> None:
    """Redraw, in place, every event whose item repeats an earlier one of the same user.

    item, local, cluster: (E,) (cluster: each slot's taste cluster). The first POPULAR_ROUNDS redraws use the taste distribution, later
    ones the uniform distribution (a user holds at most half the catalogue, so they finish quickly).
    """
    num_items = len(sampler.global_cdf)
    key = local * num_items + item
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    repeat = np.r_[False, sorted_key[1:] == sorted_key[:-1]]
    taken = sorted_key[~repeat]  # sorted distinct (user, item) keys of the first draw
    added = np.empty(0, np.int64)  # sorted keys accepted by redraws (kept apart: merging is then cheap)
    pending = np.sort(order[repeat])  # slots to redraw, in slot order, hence block order
    rounds = 0
    while pending.size:
        counts = np.bincount(local[pending] // BLOCK_USERS, minlength=len(rngs))
        u = _draw(rngs, counts, lambda r, n: r.random((n, 2)))
        if rounds < POPULAR_ROUNDS:
            new = sampler.draw(cluster[pending], u[:, 0], u[:, 1])
        else:
            new = np.minimum((u[:, 1] * num_items).astype(np.int64), num_items - 1)
        new_key = local[pending] * num_items + new
        fresh = np.flatnonzero(~_contains(taken, new_key) & ~_contains(added, new_key))
        accepted_key, first = np.unique(new_key[fresh], return_index=True)
        accepted = fresh[first]
        item[pending[accepted]] = new[accepted]
        added = np.sort(np.concatenate([added, accepted_key]), kind="stable")  # merge of two sorted runs
        pending = np.delete(pending, accepted)
        rounds += 1


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(n,) whether each of ``keys`` (n,) is in the sorted array ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _edges(rng: np.random.Generator, cluster: np.ndarray, friends_per_user: int,
           same_share: float) -> pd.DataFrame:
    """Friendships in both directions, sorted by (src, dst); about ``friends_per_user`` per user."""
    num_users = len(cluster)
    by_cluster = np.argsort(cluster, kind="stable")
    cluster_size = np.bincount(cluster)
    cluster_start = np.cumsum(cluster_size) - cluster_size
    src = np.repeat(np.arange(num_users), rng.poisson(friends_per_user / 2, num_users))
    same = rng.random(len(src)) < same_share
    pick = rng.random(len(src))
    size, start = cluster_size[cluster[src]], cluster_start[cluster[src]]
    same |= size == num_users
    pool = np.where(same, size, num_users - size)  # candidates: own cluster, or all the others
    pos = np.minimum((pick * pool).astype(np.int64), pool - 1)
    del pick, pool  # the graph of a million users is large: drop temporaries as soon as possible
    pos += np.where(same, start, np.where(pos < start, 0, size))  # into the own segment, or skip it
    dst = by_cluster[pos]
    del pos, size, start, same
    keep = src != dst
    pair = np.minimum(src, dst)[keep] * num_users + np.maximum(src, dst)[keep]
    del src, dst, keep
    pair.sort()
    pair = pair[np.diff(pair, prepend=-1) != 0]  # unique by sorting: numpy's hash unique is slower here
    lo, hi = np.divmod(pair, num_users)
    both = np.concatenate([pair, hi * num_users + lo])
    del pair, lo, hi
    both.sort()
    src, dst = np.divmod(both, num_users)
    return pd.DataFrame({"src": src, "dst": dst}, copy=False)
