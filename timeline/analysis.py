"""Send timeline analysis: duplicates, before/after totals, concurrency and a plain finding.

Pure functions over SendEvent values (no Flask, no database), so the same code judges
SendOnce's own send_log and a legacy log exported from another sender.

A *key* is what must be sent at most once, in one of two views: "exact" = (campaign, lead,
step, variant), the unique constraint on SendLog; "recipient" = (campaign, lead, step), what
the recipient sees (variant A and then B of the same step are two mails to them). A step
(of a sequence) is "" when unknown, and a follow-up step is never a duplicate. Events are
always sorted by (at, campaign, lead, variant, trigger, worker, step) first, so every result
is deterministic and independent of input order; "already seen" follows that order.

The period "from the first duplicate" starts at the first send of the first repeated key
(the original the first duplicate repeats), not at the duplicate itself: with times in
milliseconds the original is earlier and belongs to the incident. Bursts are the
duplicates of one campaign close in time (gaps of at most `burst_gap` seconds), so a long
log with several separate incidents is described incident by incident.

Naming: the incident's table says "unikalne leady" (unique leads) for what is really unique
keys. The Python attributes say what they count (`unique_keys`, `unique_leads` = distinct
(campaign, lead)); `to_json` keeps the incident's wording and writes unique keys under the
JSON name "unique_leads".
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter

Key = tuple[str, ...]
VIEWS = ("exact", "recipient")
BURST_GAP = 3600.0  # seconds between duplicates of a campaign that still belong to one burst
_EPOCH = datetime(1970, 1, 1)
MAX_BUCKETS = 100_000  # an upload spanning decades must not allocate millions of empty buckets


@dataclass(frozen=True, order=True, slots=True)
class SendEvent:
    """One email that went out: when, which key, and where known what triggered it and who sent it."""

    # Field order is the sort order: time first, then the key, then where it came from.
    at: datetime  # naive UTC
    campaign: str
    lead: str
    variant: str = ""
    trigger: str = ""  # scheduler / button / cli, "" when unknown
    worker: str = ""  # host:pid, "" when unknown
    step: str = ""  # the step of a sequence, "" when unknown

    def __post_init__(self) -> None:
        if self.at.tzinfo is not None:
            raise ValueError("SendEvent.at must be naive UTC")

    @property
    def key(self) -> Key:
        """The exact key that must be sent at most once: (campaign, lead, step, variant)."""
        return (self.campaign, self.lead, self.step, self.variant)

    @property
    def recipient_key(self) -> Key:
        """What the recipient sees as one mail: (campaign, lead, step), whichever variant."""
        return (self.campaign, self.lead, self.step)


# The dataclass's own order, compared in C: sorted(events) calls the generated __lt__ in
# Python, ~1.5 s per 1,000,000 comparisons of a large log.
SORT_KEY = attrgetter("at", "campaign", "lead", "variant", "trigger", "worker", "step")


def in_order(events: Iterable[SendEvent]) -> list[SendEvent]:
    """The events in SendEvent order (time first), as sorted() would give them, faster."""
    return sorted(events, key=SORT_KEY)


_KEYS_EXACT = attrgetter("campaign", "lead", "step", "variant")
# Each view's key, computed in C (the properties' values, ~5x faster on a large log).
_KEYS = {"exact": _KEYS_EXACT,
         "recipient": attrgetter("campaign", "lead", "step")}


def key_function(view: str):
    """The key of an event in a view ("exact" or "recipient")."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {VIEWS}")
    return _KEYS[view]


@dataclass(frozen=True)
class Totals:
    """Counts for a period (before / from the first duplicate) and its first and last send."""

    # unique_keys counts keys *first* sent in the period, so before + after add up to the
    # total and duplicate_sends == sends - unique_keys holds in every row.
    sends: int = 0
    unique_keys: int = 0
    duplicate_sends: int = 0
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    """A key sent more than once, with every one of its sends."""

    campaign: str
    lead: str
    variant: str
    count: int
    times: list[datetime]
    workers: list[str]  # one per send, parallel to times ("" when unknown)
    triggers: list[str]  # one per send, parallel to times ("" when unknown)
    step: str = ""
    variants: list[str] = field(default_factory=list)  # one per send (the recipient view mixes them)


@dataclass(frozen=True)
class Cluster:
    """Sends of one campaign close together in time that look concurrent."""

    campaign: str
    start: datetime
    end: datetime
    count: int
    workers: list[str]  # distinct known workers, sorted
    keys_repeated: bool


@dataclass(frozen=True)
class Burst:
    """Duplicates of one campaign close in time: one incident, described on its own."""

    campaign: str
    start: datetime  # the first send of the first repeated key in it
    end: datetime  # its last duplicate send
    sends: int  # all of the campaign's sends from start to end
    duplicate_sends: int
    leads: int  # distinct leads that got a duplicate
    groups: list[DuplicateGroup]  # the keys repeated in it, each with only its sends in the burst
    second_histogram: dict[int, int]  # second of the minute of its duplicate sends


@dataclass(frozen=True)
class Bucket:
    """One bar of the timeline chart."""

    start: datetime
    sends: int
    duplicates: int
    by_trigger: dict[str, int]  # "" = unknown trigger


@dataclass(frozen=True)
class Analysis:
    """Everything `analyse` finds; `to_json` and timeline.words render it."""

    total_sends: int
    unique_keys: int
    unique_leads: int  # distinct (campaign, lead); < unique_keys if a lead got two variants
    duplicate_sends: int
    duplicate_groups: list[DuplicateGroup]
    first_duplicate_at: datetime | None
    before: Totals
    after: Totals
    duplicate_second_histogram: dict[int, int]
    median_interval_seconds: float | None
    clusters: list[Cluster]
    first_send_at: datetime | None
    last_send_at: datetime | None
    cluster_seconds: float
    view: str = "exact"  # which key the counts use (see VIEWS)
    split_at: datetime | None = None  # "from the first duplicate" starts here (its original send)
    other_view_duplicates: int | None = None  # duplicate sends counted in the other view
    bursts: list[Burst] = field(default_factory=list)


def _mark(ordered: list[SendEvent], key=_KEYS_EXACT) -> list[tuple[SendEvent, bool]]:
    """Each event with whether its key was already seen, i.e. whether it is a duplicate send."""
    seen: set[Key] = set()
    marked = []
    for event in ordered:
        k = key(event)
        marked.append((event, k in seen))
        seen.add(k)
    return marked


def _totals(marked: list[tuple[SendEvent, bool]]) -> Totals:
    """Totals of a run of marked events (in time order)."""
    if not marked:
        return Totals()
    duplicates = sum(1 for _, dup in marked if dup)
    return Totals(len(marked), len(marked) - duplicates, duplicates, marked[0][0].at, marked[-1][0].at)


def _group(sends: list[SendEvent]) -> DuplicateGroup:
    first, variants = sends[0], [e.variant for e in sends]
    variant = first.variant if len(set(variants)) == 1 else "/".join(sorted(set(variants)))
    return DuplicateGroup(first.campaign, first.lead, variant, len(sends), [e.at for e in sends],
                          [e.worker for e in sends], [e.trigger for e in sends], first.step, variants)


def _groups(ordered: list[SendEvent], key=_KEYS_EXACT) -> list[DuplicateGroup]:
    """Keys sent more than once, with every send's time, worker and trigger."""
    by_key: dict[Key, list[SendEvent]] = defaultdict(list)
    for event in ordered:
        by_key[key(event)].append(event)
    groups = [_group(sends) for sends in by_key.values() if len(sends) > 1]
    return sorted(groups, key=lambda g: (g.times[0], g.campaign, g.lead, g.step, g.variant))


def _by_campaign(ordered: list[SendEvent]) -> dict[str, list[SendEvent]]:
    """Events split per campaign, each list still in time order."""
    split: dict[str, list[SendEvent]] = defaultdict(list)
    for event in ordered:
        split[event.campaign].append(event)
    return split


def _median_gap(ordered: list[SendEvent]) -> float | None:
    """Median gap in seconds between consecutive sends of the same campaign."""
    gaps = [
        (b.at - a.at).total_seconds()
        for sends in _by_campaign(ordered).values()
        for a, b in zip(sends, sends[1:], strict=False)
    ]
    return float(statistics.median(gaps)) if gaps else None


def _runs(sends: list[SendEvent], seconds: float) -> Iterator[list[SendEvent]]:
    """Maximal runs in which each send follows the previous one within `seconds`."""
    run: list[SendEvent] = []
    for event in sends:
        if run and (event.at - run[-1].at).total_seconds() > seconds:
            yield run
            run = []
        run.append(event)
    if run:
        yield run


def _clusters(ordered: list[SendEvent], seconds: float, key=_KEYS_EXACT) -> list[Cluster]:
    """Runs of one campaign's sends close in time that involve two workers or a repeated key."""
    clusters = []
    for campaign, sends in _by_campaign(ordered).items():
        for run in _runs(sends, seconds):
            if len(run) < 2:
                continue  # most runs of a paced campaign: one send alone
            workers = sorted({e.worker for e in run if e.worker})
            repeated = len({key(e) for e in run}) < len(run)
            # One worker sending different leads quickly is normal pacing, not concurrency.
            if len(run) > 1 and (len(workers) > 1 or repeated):
                clusters.append(Cluster(campaign, run[0].at, run[-1].at, len(run), workers, repeated))
    return sorted(clusters, key=lambda c: (c.start, c.campaign))


def _split(marked: list[tuple[SendEvent, bool]], key) -> int:
    """Where "from the first duplicate" starts: the first send of the first repeated key."""
    first_dup = next((i for i, (_, dup) in enumerate(marked) if dup), None)
    if first_dup is None:
        return len(marked)
    repeated = key(marked[first_dup][0])
    return next(i for i, (e, _) in enumerate(marked) if key(e) == repeated)


def _burst_spans(pairs: list[tuple[SendEvent, bool]], key, gap: float) -> list[list[datetime]]:
    """[start, end] of each burst in one campaign's marked sends (in time order)."""
    previous: dict[Key, datetime] = {}  # each key's latest send so far
    spans: list[list[datetime]] = []
    for event, dup in pairs:
        k = key(event)
        if dup:
            # A duplicate long after its original starts the burst at itself, not days before.
            origin = previous[k] if (event.at - previous[k]).total_seconds() <= gap else event.at
            if spans and (origin - spans[-1][1]).total_seconds() <= gap:
                spans[-1][1] = event.at
            else:
                spans.append([origin, event.at])
        previous[k] = event.at
    return spans


def _bursts(marked: list[tuple[SendEvent, bool]], key, gap: float) -> list[Burst]:
    """Bursts of duplicates per campaign (see the module docstring)."""
    per_campaign: dict[str, list[tuple[SendEvent, bool]]] = defaultdict(list)
    for pair in marked:
        per_campaign[pair[0].campaign].append(pair)
    bursts = []
    for campaign, pairs in per_campaign.items():
        times = [e.at for e, _ in pairs]
        for start, end in _burst_spans(pairs, key, gap):
            inside = pairs[bisect_left(times, start):bisect_right(times, end)]
            dups = [e for e, dup in inside if dup]  # duplicates by the whole log's count
            bursts.append(Burst(campaign, start, end, len(inside), len(dups), len({e.lead for e in dups}),
                                _groups([e for e, _ in inside], key),
                                dict(sorted(Counter(e.at.second for e in dups).items()))))
    return sorted(bursts, key=lambda b: (b.start, b.campaign))


def analyse(events: Iterable[SendEvent], cluster_seconds: float = 5, view: str = "exact",
            burst_gap: float = BURST_GAP) -> Analysis:
    """Analyse send events for duplicates, their timing and concurrency, in one view of the key."""
    key = key_function(view)
    ordered = in_order(events)
    marked = _mark(ordered, key)
    first_dup = next((e.at for e, dup in marked if dup), None)
    split = _split(marked, key)
    duplicate_seconds = Counter(e.at.second for e, dup in marked if dup)
    other = key_function(VIEWS[1 - VIEWS.index(view)])
    return Analysis(
        total_sends=len(ordered),
        unique_keys=len({key(e) for e in ordered}),
        unique_leads=len({(e.campaign, e.lead) for e in ordered}),
        duplicate_sends=sum(duplicate_seconds.values()),
        duplicate_groups=_groups(ordered, key),
        first_duplicate_at=first_dup,
        before=_totals(marked[:split]),
        after=_totals(marked[split:]),
        duplicate_second_histogram=dict(sorted(duplicate_seconds.items())),
        median_interval_seconds=_median_gap(ordered),
        clusters=_clusters(ordered, cluster_seconds, key),
        first_send_at=ordered[0].at if ordered else None,
        last_send_at=ordered[-1].at if ordered else None,
        cluster_seconds=cluster_seconds,
        view=view,
        split_at=marked[split][0].at if split < len(marked) else None,
        other_view_duplicates=len(ordered) - len({other(e) for e in ordered}),
        bursts=_bursts(marked, key, burst_gap),
    )


def bucket(events: Iterable[SendEvent], minutes: int, view: str = "exact") -> list[Bucket]:
    """Sends per time bucket (aligned to the Unix epoch), empty buckets included, for a chart."""
    if minutes < 1:
        raise ValueError("a bucket is at least one minute wide")
    marked = _mark(in_order(events), key_function(view))
    if not marked:
        return []
    width = timedelta(minutes=minutes)
    first, last = (_EPOCH + ((marked[i][0].at - _EPOCH) // width) * width for i in (0, -1))
    count = (last - first) // width + 1
    if count > MAX_BUCKETS:
        raise ValueError(f"{count} buckets of {minutes} min; choose wider buckets")
    sends, dups = [0] * count, [0] * count
    triggers: list[Counter[str]] = [Counter() for _ in range(count)]
    for event, dup in marked:
        i = (event.at - first) // width
        sends[i] += 1
        dups[i] += dup
        triggers[i][event.trigger] += 1
    return [Bucket(first + i * width, sends[i], dups[i], dict(sorted(triggers[i].items())))
            for i in range(count)]


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _totals_json(totals: Totals) -> dict:
    return {"sends": totals.sends, "unique_leads": totals.unique_keys,
            "duplicate_sends": totals.duplicate_sends}


def to_json(analysis: Analysis) -> dict:
    """The CLI's --json object; times are ISO-8601 naive UTC, "unique_leads" means unique keys."""
    return {
        "total_sends": analysis.total_sends,
        "unique_leads": analysis.unique_keys,
        "duplicate_sends": analysis.duplicate_sends,
        "first_duplicate_at": _iso(analysis.first_duplicate_at),
        "before": _totals_json(analysis.before),
        "after": _totals_json(analysis.after),
        "duplicate_groups": [
            {"campaign": g.campaign, "lead": g.lead, "variant": g.variant, "count": g.count,
             "times": [_iso(t) for t in g.times]} | ({"step": g.step} if g.step else {})
            for g in analysis.duplicate_groups
        ],
        "duplicate_second_histogram": _histogram_json(analysis.duplicate_second_histogram),
        "median_interval_seconds": analysis.median_interval_seconds,
        "view": analysis.view,
        "from_first_duplicate_at": _iso(analysis.split_at),
        "other_view_duplicate_sends": analysis.other_view_duplicates,
        "bursts": [
            {"campaign": b.campaign, "start": _iso(b.start), "end": _iso(b.end), "sends": b.sends,
             "duplicate_sends": b.duplicate_sends, "leads": b.leads,
             "duplicate_second_histogram": _histogram_json(b.second_histogram)}
            for b in analysis.bursts
        ],
    }


def _histogram_json(histogram: dict[int, int]) -> dict[str, int]:
    return {str(s): n for s, n in histogram.items()}


# Storing an Analysis (an uploaded legacy log is analysed once, its pages are served from
# the stored result): plain JSON values, times as ISO text. Groups are capped: a page shows
# a few hundred and the finding reads a burst's pattern from its first STORED_GROUPS keys.
STORED_GROUPS = 1000


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _group_to(g: DuplicateGroup) -> list:
    return [g.campaign, g.lead, g.variant, g.count, [t.isoformat() for t in g.times], g.workers, g.triggers,
            g.step, g.variants]


def _group_from(v: list) -> DuplicateGroup:
    return DuplicateGroup(v[0], v[1], v[2], v[3], [datetime.fromisoformat(t) for t in v[4]], *v[5:])


def _totals_to(t: Totals) -> list:
    return [t.sends, t.unique_keys, t.duplicate_sends, _iso(t.start), _iso(t.end)]


def _totals_from(v: list) -> Totals:
    return Totals(v[0], v[1], v[2], _dt(v[3]), _dt(v[4]))


def to_dict(analysis: Analysis) -> dict:
    """The Analysis as JSON values (groups capped at STORED_GROUPS); from_dict reads it back."""
    a = analysis
    return {
        "counts": [a.total_sends, a.unique_keys, a.unique_leads, a.duplicate_sends],
        "groups": [_group_to(g) for g in a.duplicate_groups[:STORED_GROUPS]],
        "first_duplicate_at": _iso(a.first_duplicate_at), "before": _totals_to(a.before),
        "after": _totals_to(a.after), "histogram": [[s, n] for s, n in a.duplicate_second_histogram.items()],
        "median": a.median_interval_seconds,
        "clusters": [[c.campaign, c.start.isoformat(), c.end.isoformat(), c.count, c.workers, c.keys_repeated]
                     for c in a.clusters[:STORED_GROUPS]],
        "first_send_at": _iso(a.first_send_at), "last_send_at": _iso(a.last_send_at),
        "cluster_seconds": a.cluster_seconds, "view": a.view, "split_at": _iso(a.split_at),
        "other_view_duplicates": a.other_view_duplicates,
        "bursts": [[b.campaign, b.start.isoformat(), b.end.isoformat(), b.sends, b.duplicate_sends, b.leads,
                    [_group_to(g) for g in b.groups[:STORED_GROUPS]],
                    [[s, n] for s, n in b.second_histogram.items()]] for b in a.bursts],
    }


def from_dict(data: dict) -> Analysis:
    """The Analysis that to_dict stored (with its groups capped)."""
    return Analysis(
        *data["counts"], [_group_from(g) for g in data["groups"]], _dt(data["first_duplicate_at"]),
        _totals_from(data["before"]), _totals_from(data["after"]), {s: n for s, n in data["histogram"]},
        data["median"],
        [Cluster(c[0], datetime.fromisoformat(c[1]), datetime.fromisoformat(c[2]), *c[3:])
         for c in data["clusters"]],
        _dt(data["first_send_at"]), _dt(data["last_send_at"]), data["cluster_seconds"], data["view"],
        _dt(data["split_at"]), data["other_view_duplicates"],
        [Burst(b[0], datetime.fromisoformat(b[1]), datetime.fromisoformat(b[2]), b[3], b[4], b[5],
               [_group_from(g) for g in b[6]], {s: n for s, n in b[7]}) for b in data["bursts"]],
    )


def buckets_to_list(buckets: list[Bucket]) -> list[list]:
    """Buckets as JSON values."""
    return [[b.start.isoformat(), b.sends, b.duplicates, b.by_trigger] for b in buckets]


def buckets_from_list(values: list[list]) -> list[Bucket]:
    """Buckets that buckets_to_list stored."""
    return [Bucket(datetime.fromisoformat(v[0]), v[1], v[2], v[3]) for v in values]
