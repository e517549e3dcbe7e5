"""Words for a timeline Analysis: the plain-language finding and the text report (pl, en).

Kept apart from timeline.py, which only counts: this module only phrases what it found.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from timeline.analysis import Analysis, Burst, DuplicateGroup, Totals


def _pl_form(n: int, one: str, few: str, many: str) -> str:
    """The Polish noun form for n: 1 mail, 2 maile, 5 maili, 22 maile, 12 maili."""
    if n == 1:
        return one
    return few if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14) else many


def _every(seconds: float, lang: str) -> str:
    """'co 5 minut' / 'every 5 minutes', rounded to the natural unit."""
    for size, pl, en in ((3600, ("godzinę", "godziny", "godzin"), "hour"),
                         (60, ("minutę", "minuty", "minut"), "minute"),
                         (1, ("sekundę", "sekundy", "sekund"), "second")):
        if seconds >= size:
            n = round(seconds / size)
            if lang == "pl":
                return f"co {pl[0]}" if n == 1 else f"co {n} {_pl_form(n, *pl)}"
            return f"every {en}" if n == 1 else f"every {n} {en}s"
    return ""


def _duration(seconds: float, lang: str) -> str:
    """A short duration: '3 s', '12 min', '2 h', '4 dni' / '4 days'."""
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 86400:
        return f"{round(seconds / 3600)} h"
    days = round(seconds / 86400)
    if lang == "pl":
        return f"{days} {_pl_form(days, 'dzień', 'dni', 'dni')}"
    return f"{days} day{'s' * (days != 1)}"


def _local(at: datetime, tz: str) -> datetime:
    return at.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def _clock(analysis: Analysis, at: datetime | None, tz: str) -> str:
    """A time in the reader's zone; with the date only when the sends span several days."""
    if at is None or analysis.first_send_at is None or analysis.last_send_at is None:
        return "—"
    same_day = _local(analysis.first_send_at, tz).date() == _local(analysis.last_send_at, tz).date()
    return _local(at, tz).strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


_NUMBERS = {
    "pl": {2: "dwa", 3: "trzy", 4: "cztery"},
    "en": {1: "one", 2: "two", 3: "three", 4: "four"},
}
_WORDS = {
    "pl": {
        "empty": "Brak wysyłek do analizy.",
        "clean": "0 duplikatów: każdy lead dostał każdą wiadomość dokładnie raz.",
        "from": "Od {start}{every} ten sam lead dostaje {n} {emails} {timing} — {cause}.",
        "same_second": "w tej samej sekundzie",
        "within": "w ciągu {d}",
        "apart": "w odstępie do {d}",
        "once_more": "ten sam proces wysłał mail ponownie",
        "likely": "prawdopodobnie {cause} (log nie ma kolumny procesu, więc tego nie dowodzi)",
        "period": "{dup} z {sends} {sends_word} {when} ({tz}) to duplikaty.",
        "from_to": "od {start} do {end}", "at": "o {start}",
        "bursts": "Duplikaty w {n} osobnych seriach (czas: {tz}):",
        "burst": "kampania {campaign}, {when}: {dup} z {sends} {sends_word} to duplikaty "
                 "({leads} {leads_word}); {every}ten sam lead dostaje {n} {emails} {timing}{second} "
                 "— {cause}",
        "burst_second": ", w sekundzie :{s:02d}",
        "more_bursts": "… i jeszcze {n} {word}.",
        "view_recipient": "Jeden mail to ta sama kampania, lead i krok (widok odbiorcy: inny wariant "
                          "to drugi mail)",
        "view_exact": "Jeden mail to ta sama kampania, lead, krok i wariant (widok dokładny)",
        "other_view": "; w drugim widoku duplikatów: {n}.",
        "later": "powtórna wysyłka po czasie, nie równoległa",
        "mixed": "równolegle: {a}, po czasie: {b}",
        "second": "{top} z {total} duplikatów {verb} w sekundzie :{s:02d} minuty{others} — "
                  "typowe dla zadania uruchamianego z harmonogramu (cron).",
        "all_second": "Wszystkie duplikaty wyszły w sekundzie :{s:02d} minuty — "
                      "typowe dla zadania uruchamianego z harmonogramu (cron).",
        "others": " (poza tym: {list})",
        "senders": "Procesy: {workers}.",
        "triggers": "Wyzwalacze: {triggers}.",
        "variants": "Uwaga: leady dostały też inny wariant tej samej kampanii ({n}x; "
                    "nie liczone jako duplikaty).",
        "totals": "Razem wysyłek: {total}, unikalnych: {unique}, duplikatów: {dup}.",
    },
    "en": {
        "empty": "No sends to analyse.",
        "clean": "0 duplicates: every lead received every message exactly once.",
        "from": "From {start},{every} the same lead gets {n} emails {timing} — {cause}.",
        "same_second": "within the same second",
        "within": "within {d}",
        "apart": "up to {d} apart",
        "once_more": "one sender sent the same email again",
        "likely": "likely {cause} (the log has no worker column to prove it)",
        "period": "{dup} of {sends} {sends_word} {when} ({tz}) were duplicates.",
        "from_to": "from {start} to {end}", "at": "at {start}",
        "bursts": "Duplicates in {n} separate bursts (times in {tz}):",
        "burst": "campaign {campaign}, {when}: {dup} of {sends} {sends_word} were duplicates "
                 "({leads} {leads_word}); {every}the same lead got {n} emails {timing}{second} — {cause}",
        "burst_second": ", at second :{s:02d}",
        "more_bursts": "… and {n} more {word}.",
        "view_recipient": "One mail is the same campaign, lead and step (the recipient's view: another "
                          "variant is a second mail)",
        "view_exact": "One mail is the same campaign, lead, step and variant (the exact view)",
        "other_view": "; duplicates in the other view: {n}.",
        "later": "sent again later, not in parallel",
        "mixed": "in parallel: {a}, later: {b}",
        "second": "{top} of {total} duplicate sends went out at second :{s:02d} of a minute{others} — "
                  "typical of a job started by a scheduler (cron).",
        "all_second": "All duplicate sends went out at second :{s:02d} of a minute — "
                      "typical of a job started by a scheduler (cron).",
        "others": " (others: {list})",
        "senders": "Senders: {workers}.",
        "triggers": "Triggers: {triggers}.",
        "variants": "Note: leads also got another variant of the same campaign ({n}x; "
                    "not counted as duplicates).",
        "totals": "In total: {total} {total_word}, {unique} unique, {dup} {dup_word}.",
    },
}


def _words(lang: str) -> dict[str, str]:
    if lang not in _WORDS:
        raise ValueError(f"unsupported language {lang!r}; use one of {sorted(_WORDS)}")
    return _WORDS[lang]


def _span(group: DuplicateGroup) -> float:
    return (group.times[-1] - group.times[0]).total_seconds()


def _parallel_cause(groups: list[DuplicateGroup], lang: str) -> str:
    """How many senders ran at once: distinct workers when all are known, else the copies."""
    known = all(w for g in groups for w in g.workers)
    n = max(len(set(g.workers)) if known else g.count for g in groups)
    if n == 1:
        return _words(lang)["once_more"]
    word = _NUMBERS[lang].get(n, str(n))
    if lang == "pl":
        cause = f"{word} równoległe procesy wysyłki" if n < 5 else f"{n} równoległych procesów wysyłki"
    else:
        cause = f"{word} senders running in parallel"
    # Copies in one second suggest parallel senders; only named workers prove it.
    return cause if known else _words(lang)["likely"].format(cause=cause)


def _pattern_parts(groups: list[DuplicateGroup], cluster_seconds: float, lang: str) -> dict[str, str]:
    """How often, how many copies, how close, and why, for some duplicate groups."""
    w = _words(lang)
    starts = sorted({g.times[0] for g in groups})
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    # A cadence needs at least two gaps to be a pattern rather than a coincidence.
    cadence = _every(statistics.median(gaps), lang) if len(gaps) > 1 else ""
    lo, hi = min(g.count for g in groups), max(g.count for g in groups)
    span = max(_span(g) for g in groups)
    timing = w["same_second"] if span < 1 else w["within" if span <= cluster_seconds else "apart"]
    parallel = [g for g in groups if _span(g) <= cluster_seconds]
    if len(parallel) == len(groups):
        cause = _parallel_cause(groups, lang)
    else:
        cause = w["mixed"].format(a=len(parallel), b=len(groups) - len(parallel)) if parallel else w["later"]
    return {"cadence": cadence, "n": str(lo) if lo == hi else f"{lo}–{hi}",
            "emails": _pl_form(hi, "mail", "maile", "maili"),
            "timing": timing.format(d=_duration(span, lang)), "cause": cause}


def _pattern(analysis: Analysis, lang: str, tz: str) -> str:
    """The first sentence: since when, how often, how many copies, how close, and why."""
    parts = _pattern_parts(analysis.duplicate_groups, analysis.cluster_seconds, lang)
    every = f" {parts['cadence']}{',' * (lang == 'en')}" if parts["cadence"] else ""
    return _words(lang)["from"].format(start=_clock(analysis, analysis.first_duplicate_at, tz), every=every,
                                       n=parts["n"], emails=parts["emails"], timing=parts["timing"],
                                       cause=parts["cause"])


def _sends_word(n: int, lang: str) -> str:
    if lang == "pl":
        return "wysyłki" if n == 1 else "wysyłek"
    return "send" if n == 1 else "sends"


def _when(analysis: Analysis, burst: Burst, lang: str, tz: str) -> str:
    w, start = _words(lang), _clock(analysis, burst.start, tz)
    return w["at"].format(start=start) if burst.start == burst.end else w["from_to"].format(
        start=start, end=_clock(analysis, burst.end, tz))


def _period(analysis: Analysis, burst: Burst, lang: str, tz: str) -> str:
    """'16 z 32 wysyłek od 11:40:01 do 12:50:01 (UTC) to duplikaty.': how many of how many, when."""
    return _words(lang)["period"].format(dup=burst.duplicate_sends, sends=burst.sends, tz=tz,
                                         sends_word=_sends_word(burst.sends, lang),
                                         when=_when(analysis, burst, lang, tz))


def _burst_line(analysis: Analysis, burst: Burst, lang: str, tz: str) -> str:
    """One burst of several: campaign, period, how many of how many, the pattern and the likely cause."""
    w = _words(lang)
    groups = burst.groups or analysis.duplicate_groups[:1]
    parts = _pattern_parts(groups, analysis.cluster_seconds, lang)
    hist, dup = burst.second_histogram, burst.duplicate_sends
    second, top = max(hist.items(), key=lambda item: (item[1], -item[0])) if hist else (0, 0)
    leads_word = (_pl_form(burst.leads, "lead", "leady", "leadów") if lang == "pl"
                  else "lead" if burst.leads == 1 else "leads")
    return w["burst"].format(
        campaign=burst.campaign, when=_when(analysis, burst, lang, tz), dup=dup, sends=burst.sends,
        sends_word=_sends_word(burst.sends, lang), leads=burst.leads, leads_word=leads_word,
        every=f"{parts['cadence']}{',' * (lang == 'en')} " if parts["cadence"] else "", n=parts["n"],
        emails=parts["emails"],
        timing=parts["timing"], cause=parts["cause"],
        second=w["burst_second"].format(s=second) if dup >= 3 and top * 4 >= dup * 3 else "")


def _bursts_text(analysis: Analysis, lang: str, tz: str, shown: int = 5) -> str:
    """Several separate bursts, each described on its own (the largest first when there are many)."""
    w, bursts = _words(lang), analysis.bursts
    largest = sorted(bursts, key=lambda b: -b.duplicate_sends)[:shown]
    chosen = sorted(largest, key=lambda b: (b.start, b.campaign))
    lines = [w["bursts"].format(n=len(bursts), tz=tz), *(f"{i}) {_burst_line(analysis, b, lang, tz)}."
                                                          for i, b in enumerate(chosen, start=1))]
    if len(bursts) > shown:
        word = _pl_form(len(bursts) - shown, "seria", "serie", "serii") if lang == "pl" else "bursts"
        lines.append(w["more_bursts"].format(n=len(bursts) - shown, word=word))
    return " ".join(lines)


def _second_sentence(analysis: Analysis, lang: str) -> str:
    """The second-of-minute pattern, when one second holds at least three quarters of duplicates."""
    hist, total, w = analysis.duplicate_second_histogram, analysis.duplicate_sends, _words(lang)
    second, top = max(hist.items(), key=lambda item: (item[1], -item[0]))
    if total < 3 or top * 4 < total * 3:
        return ""
    if top == total:
        return w["all_second"].format(s=second)
    others = w["others"].format(list=", ".join(f":{s:02d}" for s in hist if s != second))
    verb = _pl_form(top, "wyszedł", "wyszły", "wyszło")
    return w["second"].format(top=top, total=total, verb=verb, s=second, others=others)


def _names(values: Iterable[str], limit: int = 5) -> str:
    """Distinct non-empty names, sorted, at most `limit` of them."""
    names = sorted({v for v in values if v})
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


def _who(analysis: Analysis, lang: str) -> list[str]:
    """Sentences naming the workers and triggers behind the duplicates, where the log knows them."""
    w, groups = _words(lang), analysis.duplicate_groups
    workers = _names(x for g in groups for x in g.workers)
    triggers = _names(x for g in groups for x in g.triggers)
    return ([w["senders"].format(workers=workers)] if workers else []) + (
        [w["triggers"].format(triggers=triggers)] if triggers else [])


def _totals(analysis: Analysis, lang: str) -> str:
    """The totals, and which view of "the same mail" they count."""
    w = _words(lang)
    totals = w["totals"].format(total=analysis.total_sends, unique=analysis.unique_keys,
                                dup=analysis.duplicate_sends,
                                total_word=_sends_word(analysis.total_sends, lang),
                                dup_word="duplicate" if analysis.duplicate_sends == 1 else "duplicates")
    view = w["view_recipient" if analysis.view == "recipient" else "view_exact"]
    other = analysis.other_view_duplicates
    if other is None or other == analysis.duplicate_sends:
        return f"{totals} {view}."
    return f"{totals} {view}{w['other_view'].format(n=other)}"


def finding(analysis: Analysis, lang: str = "pl", tz: str = "UTC") -> str:
    """A one-paragraph plain-language finding in Polish ("pl") or English ("en")."""
    w = _words(lang)
    if analysis.total_sends == 0:
        return w["empty"]
    if analysis.duplicate_sends == 0:
        sentences = [w["clean"]]
    elif len(analysis.bursts) > 1:
        sentences = [_bursts_text(analysis, lang, tz), *_who(analysis, lang), _totals(analysis, lang)]
    else:
        period = [_period(analysis, b, lang, tz) for b in analysis.bursts]
        sentences = [_pattern(analysis, lang, tz), _second_sentence(analysis, lang), *period,
                     *_who(analysis, lang), _totals(analysis, lang)]
    # Another variant of the same step: a second mail to the recipient, not in the exact view.
    switches = (analysis.unique_keys - analysis.unique_leads if analysis.other_view_duplicates is None
                else analysis.other_view_duplicates)
    if analysis.view == "exact" and switches > 0:
        sentences.append(w["variants"].format(n=switches))
    return " ".join(s for s in sentences if s)


_REPORT = {
    "pl": {
        "title": "Analiza timeline duplikatów (czas: {tz})",
        "header": "| okres | maile wysłane | unikalne leady | duplikaty |",
        "before": "do {t}", "after": "od {t}", "all": "całość", "total": "razem",
        "groups": "Klucze wysłane więcej niż raz: {n}",
        "campaign": "kampania", "variant": "wariant", "more": "… i jeszcze {n}",
        "seconds": "Sekunda minuty duplikatów: {hist}",
        "median": "Mediana odstępu między wysyłkami kampanii: {m}",
        "clusters": "Skupiska wysyłek w odstępach ≤ {s} s z dwóch procesów lub z powtórzonym kluczem: {n}",
        "finding": "Wniosek: {text}",
    },
    "en": {
        "title": "Duplicate timeline analysis (time: {tz})",
        "header": "| period | emails sent | unique leads | duplicates |",
        "before": "until {t}", "after": "from {t}", "all": "all", "total": "total",
        "groups": "Keys sent more than once: {n}",
        "campaign": "campaign", "variant": "variant", "more": "… and {n} more",
        "seconds": "Second of the minute of duplicate sends: {hist}",
        "median": "Median gap between a campaign's sends: {m}",
        "clusters": "Clusters of sends ≤ {s} s apart from two workers or with a repeated key: {n}",
        "finding": "Finding: {text}",
    },
}


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}".removesuffix(".0") + " s"


def _row(analysis: Analysis, label: str, totals: Totals, tz: str) -> str:
    """One table row: a label with the period's first and last send, then the three counts."""
    if totals.sends:
        label += f" ({_clock(analysis, totals.start, tz)} – {_clock(analysis, totals.end, tz)})"
    return f"| {label} | {totals.sends} | {totals.unique_keys} | {totals.duplicate_sends} |"


def _table(analysis: Analysis, lang: str, tz: str) -> list[str]:
    """The incident's before/after table, plus a total row."""
    r = _REPORT[lang]
    rows = [r["header"], "|---|---|---|---|"]
    total = Totals(analysis.total_sends, analysis.unique_keys, analysis.duplicate_sends,
                   analysis.first_send_at, analysis.last_send_at)
    if analysis.first_duplicate_at is None:
        return [*rows, _row(analysis, r["all"], total, tz)]
    t = _clock(analysis, analysis.first_duplicate_at, tz)
    return [*rows, _row(analysis, r["before"].format(t=t), analysis.before, tz),
            _row(analysis, r["after"].format(t=t), analysis.after, tz), _row(analysis, r["total"], total, tz)]


def _group_lines(analysis: Analysis, lang: str, tz: str, max_groups: int) -> list[str]:
    """'11:40:01 lead 270 (2x)' per duplicated key; campaign and variant only when they vary."""
    r, groups = _REPORT[lang], analysis.duplicate_groups
    show_campaign = len({g.campaign for g in groups}) > 1
    show_variant = len({g.variant for g in groups}) > 1
    lines = [r["groups"].format(n=len(groups))]
    for g in groups[:max_groups]:
        where = f"{r['campaign']} {g.campaign} " if show_campaign else ""
        variant = f" {r['variant']} {g.variant or '—'}" if show_variant else ""
        lines.append(f"{_clock(analysis, g.times[0], tz)} {where}lead {g.lead}{variant} ({g.count}x)")
    if len(groups) > max_groups:
        lines.append(r["more"].format(n=len(groups) - max_groups))
    return lines


def text_report(analysis: Analysis, lang: str = "pl", tz: str = "UTC", max_groups: int = 100) -> str:
    """A plain-text report like incident.md's: table, duplicate list, timing and the finding."""
    text = finding(analysis, lang, tz)  # raises ValueError for an unsupported lang before any output
    r = _REPORT[lang]
    hist = ", ".join(f":{s:02d} ×{n}" for s, n in analysis.duplicate_second_histogram.items()) or "—"
    lines = [r["title"].format(tz=tz), "", *_table(analysis, lang, tz), ""]
    if analysis.duplicate_groups:
        lines += [*_group_lines(analysis, lang, tz, max_groups), ""]
    lines += [r["seconds"].format(hist=hist),
              r["median"].format(m=_seconds(analysis.median_interval_seconds)),
              r["clusters"].format(s=f"{analysis.cluster_seconds:g}", n=len(analysis.clusters)), "",
              r["finding"].format(text=text)]
    return "\n".join(lines) + "\n"


# Why a row of a legacy log was not read, in Polish (legacy_log.REASONS has the English).
_REASONS_PL = {
    "columns": "liczba kolumn: {n}, oczekiwano {width}",
    "line_break": "znak nowej linii w polu",
    "empty_time": "brak czasu",
    "empty_lead": "brak leada",
    "empty_campaign": "brak kampanii",
    "no_seconds": "czas bez sekund {value!r} (analiza potrzebuje sekundy minuty)",
    "unreadable_time": "nieczytelny czas {value!r} (oczekiwano ISO-8601, RRRR-MM-DD GG:MM:SS, "
                       "DD.MM.RRRR GG:MM:SS albo liczby daty z Excela)",
    "invalid_time": "nieprawidłowy czas {value!r}",
    "time_range": "czas poza zakresem {value!r}",
    "not_object": "to nie jest obiekt JSON",
}
# Why rows with a status were left out (not counted as sends).
_LEFT_OUT = {
    "pl": {"delivered": "potwierdzenie doręczenia (wysyłkę liczy wiersz „wysłano”)",
           "failed": "nieudana wysyłka, mail nie wyszedł", "bounced": "mail odbity, nie dotarł",
           "engagement": "zdarzenie po wysyłce (otwarcie, kliknięcie…), nie wysyłka",
           "pending": "jeszcze niewysłane", "skipped": "pominięte przez nadawcę",
           "unknown": "nieznany status, nie liczony jako wysyłka",
           "line": "Pominięto {n} {rows} ({statuses}): {why}."},
    "en": {"delivered": "a delivery confirmation (the 'sent' row counts the send)",
           "failed": "a failed send, the mail did not go out", "bounced": "bounced, not delivered",
           "engagement": "an event after the send (open, click…), not a send",
           "pending": "not sent yet", "skipped": "skipped by the sender",
           "unknown": "an unknown status, not counted as a send",
           "line": "Left out {n} {rows} ({statuses}): {why}."},
}


def rejection(item, lang: str = "pl") -> str:
    """A rejected row's reason (a legacy_log.Rejection) in the reader's language."""
    if _words(lang) is _WORDS["pl"] and item.kind in _REASONS_PL:
        return _REASONS_PL[item.kind].format(**item.params)
    return item.reason


def left_out_lines(left_out: dict[str, dict[str, int]], lang: str = "pl") -> list[str]:
    """One sentence per kind of status that was not counted as a send: how many rows and why."""
    w, lines = _LEFT_OUT[lang], []
    for kind, statuses in left_out.items():
        n = sum(statuses.values())
        rows = _pl_form(n, "wiersz", "wiersze", "wierszy") if lang == "pl" else "row" if n == 1 else "rows"
        shown = ", ".join(f"{status or '—'} ×{count}" for status, count in
                          sorted(statuses.items(), key=lambda item: -item[1])[:5])
        lines.append(w["line"].format(n=n, rows=rows, statuses=shown, why=w.get(kind, w["unknown"])))
    return lines

