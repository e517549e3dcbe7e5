"""The printed result of a chaos run: parameters, what happened, outcome, reconciliation."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from chaos.fleet import LOGS


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def parameters(args, pop) -> list[tuple[str, str]]:
    f = args.faults
    return [
        ("duration", f"{args.duration:g} s of chaos, then recover and drain (≤ {args.drain_timeout:g} s); "
                     f"seed {args.seed}"),
        ("leads", f"{args.leads} leads, {len(pop.campaign_ids)} campaigns, {pop.enrollments} enrollments "
                  f"({_pct(args.overlap)} of leads in two campaigns); {pop.steps} steps each (step n "
                  f"waits n s after step n-1); interval 0, batch {pop.batch_size}"),
        ("processes", f"gunicorn -w {args.workers} (a scheduler in every worker), 1 dedicated `flask "
                      f"scheduler`, `flask send-due` every ~{args.cron_every:g} s, {args.clients} "
                      "HTTP admins "
                      f"({_pct(args.double_submit)} double submits, 10% reloads)"),
        ("chaos", f"SIGKILL every ~{args.kill_every:g} s (worker 5 : scheduler 3 : send-due 2), SIGSTOP "
                  f"of the {'lease' if args.freeze_target == 'holder' else 'SQLite write-lock'} holder "
                  f"every ~{args.freeze_every:g} s for {args.freeze_for} s, "
                  f"pause/resume every ~{args.pause_every:g} s (HTTP 70%, CLI 30%), a lead's sequence "
                  + (f"stopped every ~{args.stop_every:g} s" if args.stop_every > 0 else "never stopped")),
        ("SMTP faults", f"transient 421/451 {_pct(f['transient'])}, drop before DATA "
                        f"{_pct(f['drop_before'])}, drop after DATA {_pct(f['drop_after'])}, "
                        f"slow {_pct(f['slow'])} (≤ {f['slow_max']:g} s), "
                        f"550 for {_pct(f['bounce'])} of addresses (first attempt)"),
        ("engine", f"TICK {args.tick:g} s, LEASE {args.lease:g} s, STALE {args.stale:g} s, SMTP_TIMEOUT "
                   f"{args.smtp_timeout:g} s, RETRY_BASE {args.retry_base:g} s, MAX_ATTEMPTS "
                   f"{args.max_attempts}, PAUSE_AFTER_FAILURES {args.pause_after}"
                   + ("; PostgreSQL (a throwaway cluster)" if args.database == "postgresql" else "")),
    ]


def happenings(args, happened, ev, workdir: Path) -> list[tuple[str, str]]:
    journal, fleet = happened["journal"], happened["fleet"]
    kills = Counter(i.role for i in journal.items if i.action == "SIGKILL")
    presses = happened["presses"]
    kinds = Counter(p.kind for p in presses)
    events = Counter(e["ev"] for e in ev.events)
    delivered = sum(1 for e in ev.events if e["ev"] == "drop_after_data" and e["delivered"])
    errors: Counter[str] = Counter()
    for actor in happened["actors"]:
        errors.update(actor.errors)
    logs = {name: (workdir / f"{name}.log").read_text(errors="replace") for name in LOGS}
    # A lock wait that ran out: SQLite's busy_timeout, PostgreSQL's lock_timeout.
    phrase = "lock timeout" if args.database == "postgresql" else "database is locked"
    locked = sum(len(re.findall(phrase, text)) for text in logs.values())
    tracebacks = sum(text.count("Traceback") for text in logs.values())
    triggers = Counter(r["trigger"] for r in ev.logs.values() if r["status"] == "sent")
    during = sum(1 for r in ev.logs.values() if r["status"] == "sent" and r["sent_at"]
                 and _epoch(r["sent_at"]) <= happened["ended"])
    drain = happened["drain"]
    return [
        ("kills", ", ".join(f"{n} {role}" for role, n in kills.most_common()) or "none"),
        ("freezes", f"{journal.count('SIGSTOP')} SIGSTOPs ({args.freeze_target}); "
                    f"{len(ev.epochs_seen())} lease epochs seen"),
        ("processes run", f"{fleet.cron_started} send-due runs, {fleet.scheduler_starts} starts of the "
                          "dedicated scheduler"),
        ("button", f"{len(presses)} POSTs ({kinds['single']} single, {kinds['double']} in double "
                   f"submits, {kinds['reload']} reloads)"),
        ("pause/resume", ", ".join(f"{n} {k}" for k, n in sorted(happened["pauser"].done.items())) or "none"),
        ("stops", f"{sum(1 for s in happened['stopper'].stops if s.ended)} leads' sequences stopped by hand "
                  f"({journal.count('stop')} journaled)"),
        ("SMTP server", f"{events['accepted'] + delivered} accepted, {events['transient']} transient, "
                        f"{events['drop_before_data']} drops before DATA, {events['drop_after_data']} after "
                        f"DATA ({delivered} delivered), {events['bounce']} 550s; "
                        f"{sum(1 for e in ev.events if e.get('alert') and e['ev'] == 'accepted')} alert "
                        "mails to the admins (not campaign mail)"),
        ("sent by trigger", ", ".join(f"{n} {t}" for t, n in triggers.most_common())
         + f"; {during} during the chaos, the rest in the drain"),
        ("recover, drain", f"`flask recover`: {happened['recover'] or '-'}; drain {drain['seconds']:.0f} s, "
                           f"{drain['ticks']} ticks, {drain['resumed']} resumes"),
        ("errors seen", f"{tracebacks} tracebacks in app logs ({locked} '{phrase}'); client side: "
                        + (", ".join(f"{n} {k}" for k, n in errors.most_common(6)) or "none")),
    ]


def _epoch(value: str) -> float:
    from chaos.reconcile import ts

    return ts(value)


def outcome_rows(ev) -> list[list[str]]:
    rows = [["campaign", "status", "enrolled", "complete", "stopped", "failed", "skipped", "unknown", "open"]]
    by_campaign: dict[int, Counter] = {}
    for e in ev.enrollments:
        by_campaign.setdefault(e["campaign_id"], Counter())[e["state"]] += 1
    for c in ev.campaigns:
        n = by_campaign.get(c["id"], Counter())
        rows.append([str(c["id"]), c["status"], str(sum(n.values())), str(n["sent"]), str(n["stopped"]),
                     str(n["failed"]),
                     str(n["skipped"]), str(n["unknown"]), str(n["pending"] + n["sending"])])
    return rows


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  " + "  ".join("-" * w for w in widths))
    return out


def render(args, pop, happened, ev, checks, workdir: Path) -> tuple[str, dict]:
    """The text table and a JSON summary (for tests and CI)."""
    failed = [c for c in checks if not c.ok]
    lines = ["", "=" * 100,
             f"SendOnce chaos run: {'PASS' if not failed else 'FAIL'} "
             f"({len(checks) - len(failed)}/{len(checks)} checks hold)", "=" * 100, "Parameters"]
    lines += [f"  {k:<16}{v}" for k, v in parameters(args, pop)]
    lines += ["What happened"] + [f"  {k:<16}{v}" for k, v in happenings(args, happened, ev, workdir)]
    lines += ["Outcome per campaign"] + table(outcome_rows(ev))
    lines += ["Reconciliation"]
    lines += table([["#", "check", "result", "detail"]]
                   + [[str(i), c.name, "ok" if c.ok else f"FAIL ({len(c.violations)})", c.detail]
                      for i, c in enumerate(checks, 1)])
    for c in failed:
        lines += ["", f"FAIL: {c.name}"] + [f"  - {v}" for v in c.violations[:50]]
        if len(c.violations) > 50:
            lines.append(f"  … and {len(c.violations) - 50} more (report.json has all)")
    lines += ["", f"logs, journal and report: {workdir}"]
    summary = {"pass": not failed, "parameters": dict(parameters(args, pop)),
               "happened": dict(happenings(args, happened, ev, workdir)),
               "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "violations": c.violations}
                          for c in checks]}
    return "\n".join(lines), summary
