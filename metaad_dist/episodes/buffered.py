"""Episodes from bounded, streamed buffers: the pure core of the Ray sampler actors.

No Ray and no I/O here: rows arrive through a reader callable, so the whole construction is
testable in one process (tests/test_sampler_actors.py does so beside the actor tests).

Terms
- *unit*: one Parquet row group of a normal family, the streaming unit. Units lie in row-id
  order (prepare writes each family's rows in source order).
- *training rows*: the rows of a normal family in the seed's train split (data/views.py); the
  only normal rows ever sampled. A training row's *position* is its index among all training
  normal rows (families in `data.normal` order, row-id order within), the index
  `EpisodeSampler.support_rows` uses.
- *stream*: the units an actor owns of a family, in an order fixed per (seed, family, actor),
  repeated forever; stream position p is the p-th training row along it.
- *generation*: `episode index // refill_period`. An actor's buffer of a family at generation g
  is the window of stream positions [g*r, g*r + window) with r = refill_fraction * buffer_rows:
  each refill drops the oldest r rows and streams in the next r. A family with at most
  `buffer_rows` training rows of an actor is held whole, in position order, and never refilled.

So an episode is a pure function of (seed, episode index) given the plan (data layout and
sampler settings): whichever path an actor took to its buffer (sequential refills, a restart,
a jump back after a checkpoint restore), the window of a generation holds the same rows in the
same order. Each episode is built by actor `index % num_actors` from its own buffers, with the
draws of the in-memory EpisodeSampler (`default_rng([seed, index])`, same call sequence), so
when every family fits one buffer the episodes are exactly EpisodeSampler's.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from metaad_dist.config import MetaConfig, plain
from metaad_dist.episodes.episode import Episode
from metaad_dist.episodes.sampler import draw_shots
from metaad_dist.episodes.schedule import multidirectional_schedule
from metaad_dist.errors import DataError

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # scaled features (k, d), labels (k,), positions (k,)


@dataclass
class IdSet:
    """A set of row ids as packed bits over [lo, lo + span): small enough to ship to every actor."""

    lo: int
    span: int
    bits: np.ndarray  # uint8, big bit order (np.packbits)

    @classmethod
    def from_ids(cls, ids: np.ndarray, lo: int, hi: int) -> "IdSet":
        span = max(0, hi - lo + 1)
        mask = np.zeros(span, dtype=bool)
        mask[np.asarray(ids, dtype=np.int64) - lo] = True
        return cls(lo, span, np.packbits(mask))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if self.span == 0:
            return np.zeros(len(ids), dtype=bool)
        rel = np.asarray(ids, dtype=np.int64) - self.lo
        inside = (rel >= 0) & (rel < self.span)
        rel = np.where(inside, rel, 0)
        hit = (self.bits[rel >> 3] >> (7 - (rel & 7)).astype(np.uint8)) & 1
        return inside & hit.astype(bool)


@dataclass
class FamilyLayout:
    """Where one normal family's training rows lie, unit by unit."""

    name: str
    index: int  # in the normal families (data.normal order)
    shard: np.ndarray  # per unit: index into SamplerPlan.shard_paths
    row_group: np.ndarray  # per unit: row group inside that shard
    rows: np.ndarray  # per unit: rows stored
    eligible: np.ndarray  # per unit: training rows
    first_position: np.ndarray  # per unit: position of its first training row
    training_ids: IdSet  # row ids of the family's training rows
    # Row ids of its validation rows: the streaming setup samples them; actors never need them.
    validation_ids: Optional[IdSet] = None

    @property
    def training_rows(self) -> int:
        return int(self.eligible.sum())


@dataclass
class SamplerPlan:
    """Everything an actor needs, computed once per (dataset, roles, seed, settings)."""

    seed: int
    meta: MetaConfig
    num_actors: int
    buffer_rows: int
    refill_rows: int  # r: rows streamed in per refill
    refill_period: int  # episodes per generation
    normal: list[FamilyLayout]
    budget_x: dict[str, np.ndarray]  # scaled budget pools, row-id order (meta families)
    budget_row_ids: dict[str, np.ndarray]
    owned: list[list[np.ndarray]]  # [actor][normal family] -> owned unit indices, in stream order
    # Reading (data/ and episodes/shards.py); plain values so the plan pickles to actors.
    uri: str = ""
    storage: object = None
    shard_paths: list[str] = field(default_factory=list)
    shard_check: object = None  # data.manifest.ShardCheck: what a reader checks when it first opens a shard
    feature_names: list[str] = field(default_factory=list)
    scaler_state: dict = field(default_factory=dict)
    labeler_state: dict = field(default_factory=dict)
    batch_rows: int = 16384
    families: list[str] = field(default_factory=list)  # every family of the dataset
    fingerprint: str = ""

    @property
    def dim(self) -> int:
        return len(self.feature_names)


def family_rng(seed: int, purpose: int, family: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, zlib.crc32(family.encode()), *more])


def assign_units(layout: FamilyLayout, num_actors: int, buffer_rows: int, seed: int) -> list[np.ndarray]:
    """Units each actor owns, in its stream order.

    A family that fits one buffer is held whole by every actor (unit order = position order).
    A larger one is dealt out: units in a seed-shuffled order, round robin, so actors hold
    different rows; with fewer units than actors, actors share units. Each actor's stream
    order is shuffled once per (seed, family, actor) and then repeats.
    """
    units = np.flatnonzero(layout.eligible > 0)
    if layout.training_rows <= buffer_rows:
        return [units.copy() for _ in range(num_actors)]
    dealt = units[family_rng(seed, 5, layout.name).permutation(len(units))]
    owned = []
    for actor in range(num_actors):
        mine = dealt[actor::num_actors] if len(dealt) >= num_actors else dealt[[actor % len(dealt)]]
        mine = np.sort(mine)
        if int(layout.eligible[mine].sum()) > buffer_rows:
            mine = mine[family_rng(seed, 6, layout.name, actor).permutation(len(mine))]
        owned.append(mine)
    return owned


def refill_period(meta: MetaConfig, refill_rows: int, num_actors: int, reuse: float) -> int:
    """Episodes per generation so a streamed row is drawn about `reuse` times before it leaves.

    An actor builds every num_actors-th episode and each draws n_support + n_query rows; a row
    stays for buffer/refill generations, so this is about reuse * r * num_actors / rows per episode.
    """
    return max(1, int(round(reuse * refill_rows * num_actors / (meta.n_support + meta.n_query))))


Reader = Callable[[FamilyLayout, int], Iterator[Rows]]


class FamilyBuffer:
    """One actor's bounded buffer of one normal family (see the module docstring)."""

    def __init__(self, layout: FamilyLayout, units: np.ndarray, buffer_rows: int, refill_rows: int, read: Reader):
        self.layout = layout
        self.units = units
        self.read = read
        counts = layout.eligible[units]
        self.cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.cycle = int(self.cum[-1])  # training rows this actor owns
        self.static = self.cycle <= buffer_rows
        self.window = self.cycle if self.static else buffer_rows
        self.refill_rows = refill_rows
        # Sliding buffers keep one refill more than the window, so the previous generation stays
        # servable (episodes of two generations interleave at a boundary when several callers prefetch).
        self.capacity = self.cycle if self.static else buffer_rows + refill_rows
        self.base = 0  # first slot in the shared storage (attach)
        self.lo = self.hi = 0  # stream positions held: [lo, hi)
        self.start = 0  # stream position of window row 0
        self.loaded = False
        self._cursor: Optional[Iterator[Rows]] = None
        self._cursor_at = -1
        self._pending: Optional[Rows] = None

    def attach(self, x: np.ndarray, y: np.ndarray, pos: np.ndarray, base: int) -> None:
        """Use slots [base, base + capacity) of storage shared by an actor's buffers."""
        end = base + self.capacity
        self.x, self.y, self.pos, self.base = x[base:end], y[base:end], pos[base:end], base

    @property
    def size(self) -> int:
        return self.window

    def prepare(self, generation: int) -> None:
        """Make the window of this generation current (streaming what is missing)."""
        if self.static:
            if not self.loaded:
                self._fill(0, self.cycle)
                self.lo, self.hi, self.loaded = 0, self.cycle, True
                self._cursor = self._pending = None  # never read again: let the reader go
            return
        start = generation * self.refill_rows
        end = start + self.window
        if not (self.lo <= start <= self.hi):
            self.lo = self.hi = start  # a jump: rebuild from scratch
        if end > self.hi:
            self._fill(self.hi, end)
            self.hi = end
            self.lo = max(self.lo, self.hi - self.capacity)
        self.start = start

    def slots(self, window_rows: np.ndarray) -> np.ndarray:
        """Slots in the shared storage of these window rows."""
        return self.base + (self.start + window_rows) % self.capacity

    # -- streaming

    def _rows_from(self, p: int) -> Iterator[Rows]:
        """Training rows from stream position p on, forever (the stream repeats)."""
        q = p % self.cycle
        j = int(np.searchsorted(self.cum, q, side="right")) - 1
        skip = q - int(self.cum[j])
        while True:
            unit = int(self.units[j])
            got = 0
            for x, y, pos in self.read(self.layout, unit):
                got += len(x)
                if skip >= len(x):
                    skip -= len(x)
                    continue
                if skip:
                    x, y, pos = x[skip:], y[skip:], pos[skip:]
                    skip = 0
                if len(x):
                    yield x, y, pos
            if got != int(self.layout.eligible[unit]):
                raise DataError(
                    f"family '{self.layout.name}': a row group yielded {got} training rows, the plan expects "
                    f"{int(self.layout.eligible[unit])}; the dataset changed under the sampler, rebuild the pool"
                )
            j = (j + 1) % len(self.units)

    def _fill(self, p0: int, p1: int) -> None:
        """Stream positions [p0, p1) into ring slots p % capacity."""
        if self._cursor is None or self._cursor_at != p0:
            self._cursor, self._cursor_at, self._pending = self._rows_from(p0), p0, None
        p = p0
        while p < p1:
            chunk = self._pending if self._pending is not None else next(self._cursor)
            self._pending = None
            n = min(len(chunk[0]), p1 - p)
            self._write(p, chunk, n)
            if n < len(chunk[0]):
                self._pending = tuple(a[n:] for a in chunk)
            p += n
        self._cursor_at = p1

    def _write(self, p: int, chunk: Rows, n: int) -> None:
        at = p % self.capacity
        first = min(n, self.capacity - at)
        for dst, src in zip((self.x, self.y, self.pos), chunk):
            dst[at:at + first] = src[:first]
            if first < n:
                dst[: n - first] = src[first:n]


class BufferedEpisodeSampler:
    """The episodes of one actor (`index % num_actors == rank`), from its family buffers."""

    def __init__(self, plan: SamplerPlan, rank: int, read: Reader):
        if not 0 <= rank < plan.num_actors:
            raise ValueError(f"rank {rank} outside 0..{plan.num_actors - 1}")
        self.plan = plan
        self.rank = rank
        self.cfg = plain(plan.meta)
        self.schedule = multidirectional_schedule(
            len(plan.normal), sorted(plan.budget_x), self.cfg.normal_per_episode, self.cfg.meta_per_episode, plan.seed
        )
        self.buffers = [
            FamilyBuffer(layout, plan.owned[rank][i], plan.buffer_rows, plan.refill_rows, read)
            for i, layout in enumerate(plan.normal)
        ]
        # One storage for all buffers, so an episode over several families is one gather.
        total = sum(b.capacity for b in self.buffers)
        self.x = np.empty((total, plan.dim), dtype=np.float32)
        self.y = np.empty(total, dtype=np.int64)
        self.pos = np.empty(total, dtype=np.int64)
        base = 0
        for b in self.buffers:
            b.attach(self.x, self.y, self.pos, base)
            base += b.capacity

    def episode(self, index: int) -> Episode:
        plan, cfg = self.plan, self.cfg
        if index < 0 or index % plan.num_actors != self.rank:
            raise ValueError(f"episode {index} belongs to actor {index % plan.num_actors}, not {self.rank}")
        generation = index // plan.refill_period
        normal_subset, meta_group = self.schedule[index % len(self.schedule)]
        families = sorted(normal_subset)  # EpisodeSampler's candidates run in family order
        for f in families:
            self.buffers[f].prepare(generation)
        sizes = [self.buffers[f].size for f in families]
        rng = np.random.default_rng([plan.seed, index])
        drawn = rng.choice(sum(sizes), cfg.n_support + cfg.n_query, replace=False)
        slots = self._slots(families, sizes, drawn)
        x, y, pos = self.x[slots], self.y[slots], self.pos[slots]
        shot_rows, shots_x, shots_family = draw_shots(rng, plan.budget_x, meta_group, cfg.k_shot)
        s = cfg.n_support
        return Episode(
            index=index,
            normal_families=normal_subset,
            meta_families=meta_group,
            support_rows=pos[:s],
            query_rows=pos[s:],
            shot_rows=shot_rows,
            support_x=x[:s],
            support_y=y[:s],
            query_x=x[s:],
            query_y=y[s:],
            shots_x=shots_x,
            shots_family=shots_family,
        )

    def _slots(self, families: list[int], sizes: list[int], drawn: np.ndarray) -> np.ndarray:
        """Storage slots of drawn rows of the families' concatenated windows."""
        if len(families) == 1:
            return self.buffers[families[0]].slots(drawn)
        bounds = np.cumsum(sizes)
        which = np.searchsorted(bounds, drawn, side="right")
        first = np.array([0] + sizes[:-1]).cumsum()
        base = np.array([self.buffers[f].base for f in families])
        start = np.array([self.buffers[f].start for f in families])
        capacity = np.array([self.buffers[f].capacity for f in families])
        return base[which] + (start[which] + drawn - first[which]) % capacity[which]


@dataclass
class EpisodeBlock:
    """Episodes packed into two arrays for one trip through the object store.

    Ray copies each array of a returned object into shared memory once and hands the caller
    read-only views in place; a few large arrays cost far less per episode than the ~25 small
    ones of each Episode (putting blocks of 8 episodes of 512 + 95 rows x 32 features took ~360 us
    per episode as Episode objects, ~100 us packed, here). `episodes()` rebuilds Episodes whose
    arrays are views into the block (no copy).
    """

    indices: list[int]
    normal_families: list[tuple[int, ...]]
    meta_families: list[tuple[str, ...]]
    shot_counts: list[tuple[int, ...]]  # per episode, shots of each meta family
    n_support: int
    n_query: int
    x: np.ndarray  # float32: per episode support, query and shot rows
    ints: np.ndarray  # int64: per episode support_y, query_y, support_rows, query_rows, shots_family, shot rows

    @classmethod
    def pack(cls, episodes: list[Episode]) -> "EpisodeBlock":
        first = episodes[0]
        xs, ints = [], []
        for e in episodes:
            xs += [e.support_x, e.query_x, e.shots_x]
            ints += [e.support_y, e.query_y, e.support_rows, e.query_rows, e.shots_family]
            ints += [e.shot_rows[f] for f in e.meta_families]
        return cls(
            indices=[e.index for e in episodes],
            normal_families=[e.normal_families for e in episodes],
            meta_families=[e.meta_families for e in episodes],
            shot_counts=[tuple(len(e.shot_rows[f]) for f in e.meta_families) for e in episodes],
            n_support=len(first.support_x),
            n_query=len(first.query_x),
            x=np.concatenate(xs).astype(np.float32, copy=False),
            ints=np.concatenate([np.asarray(a, dtype=np.int64) for a in ints]),
        )

    def __len__(self) -> int:
        return len(self.indices)

    def episodes(self) -> list[Episode]:
        out, xa, ia = [], 0, 0
        s, q = self.n_support, self.n_query
        for k, index in enumerate(self.indices):
            counts = self.shot_counts[k]
            n_shots = sum(counts)
            x = self.x[xa:xa + s + q + n_shots]
            i = self.ints[ia:ia + 2 * (s + q) + 2 * n_shots]
            xa += len(x)
            ia += len(i)
            shots_at = 2 * (s + q) + n_shots
            bounds = np.cumsum((0,) + counts)
            shot_rows = {f: i[shots_at + bounds[j]:shots_at + bounds[j + 1]]
                         for j, f in enumerate(self.meta_families[k])}
            out.append(Episode(
                index=index,
                normal_families=self.normal_families[k],
                meta_families=self.meta_families[k],
                support_rows=i[s + q:2 * s + q],
                query_rows=i[2 * s + q:2 * (s + q)],
                shot_rows=shot_rows,
                support_x=x[:s],
                support_y=i[:s],
                query_x=x[s:s + q],
                query_y=i[s:s + q],
                shots_x=x[s + q:],
                shots_family=i[2 * (s + q):2 * (s + q) + n_shots],
            ))
        return out
