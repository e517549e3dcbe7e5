"""Preparing a chaos run: the database (leads, campaigns, logins) and the SMTP server."""

from __future__ import annotations

import json
import math
import random
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chaos.fleet import PYTHON, ROOT
from core import campaigns, importer, leads, mailboxes, sequences
from models import DelayUnit, User, db
from storage import schema
from storage.database import write_session
from storage.secrets import Vault

BODY = ("Dzień dobry {{ first_name }},\n\npiszę do {{ company }} w sprawie współpracy.\n\n"
        "Wypisz się: {{ unsubscribe_url }}\n")


@dataclass(frozen=True)
class Population:
    campaign_ids: list[int]
    enrollments: int
    batch_size: int
    emails: list[str]
    users: list[tuple[str, str]]  # (email, password) of the HTTP admins
    steps: int = 1  # steps of every campaign (a sequence: step n waits step_delay(n) after n - 1)


def lead_email(i: int) -> str:
    return f"lead{i:05d}@example.com"


def step_delay(position: int) -> int:
    """Seconds step `position` (> 1) waits after the previous step was sent: 2, 3, 4..."""
    return position


def populate(app, args, rng: random.Random) -> Population:
    """Leads, campaigns (interval 0, --steps steps, two variants each), enrollments, admin logins."""
    emails = [lead_email(i) for i in range(args.leads)]
    rows = ["email,first_name,last_name,company"]
    rows += [f"{e},Imię{i},Nazwisko{i},Firma {i % 97}" for i, e in enumerate(emails)]
    with app.app_context():
        engine = db.engine
        schema.install(engine, db.metadata)  # tables, and the triggers that keep the dashboard's counts
        report = importer.import_leads(engine, ("\n".join(rows) + "\n").encode())
        if report.rejected or len(report.lead_ids) != args.leads:
            raise RuntimeError(f"lead import failed: {report.rejected[:3]}")
        k = args.campaigns
        members: list[list[int]] = [[] for _ in range(k)]
        for i, lead_id in enumerate(report.lead_ids):
            members[i % k].append(lead_id)
            if k > 1 and rng.random() < args.overlap:  # in two campaigns: suppression crosses over
                members[(i + 1) % k].append(lead_id)
        enrollments = sum(map(len, members))
        batch = args.batch_size or auto_batch(enrollments * args.steps, args)
        boxes = [mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), name=f"Chaos {n + 1}",
                                  address=f"box{n + 1}@chaos-firma.pl", backend="smtp",
                                  smtp_host=app.config["SMTP_HOST"], smtp_port=app.config["SMTP_PORT"],
                                  smtp_security="none", daily_cap=10_000_000, min_gap_seconds=0)
                 for n in range(args.mailboxes)]
        ids = []
        for c in range(k):
            cid = campaigns.create(engine, name=f"chaos {c + 1}", from_name="SendOnce Chaos",
                                   from_address=f"campaign{c + 1}@sendonce.test",
                                   interval_seconds=0, batch_size=batch)
            for letter in "AB":
                campaigns.add_variant(engine, cid, letter, f"{letter}: {{{{ first_name }}}}, pytanie", BODY)
            add_steps(engine, cid, args.steps)
            leads.enroll(engine, cid, members[c])
            mailboxes.link(engine, cid, boxes)  # every campaign through every mailbox: shared lanes
            campaigns.start(engine, cid)
            ids.append(cid)
        users = [(f"admin{n}@sendonce.test", f"chaos-password-{n}-{rng.getrandbits(32)}")
                 for n in range(args.clients + 1)]
        with write_session(engine) as session:
            for email, password in users:
                user = User(email=email)
                user.set_password(password)
                session.add(user)
    return Population(ids, enrollments, batch, emails, users, args.steps)


def add_steps(engine, campaign_id: int, steps: int) -> None:
    """Steps 2..N, each with variants A and B, a few seconds apart (real time: the race)."""
    for position in range(2, steps + 1):
        subject = f"Krok {position}: {{{{ first_name }}}}"
        sequences.add_step(engine, campaign_id, amount=step_delay(position), unit=DelayUnit.SECONDS,
                           subject=f"A {subject}", body=BODY, now=datetime.now(UTC).replace(tzinfo=None))
        sequences.set_step_variant(engine, campaign_id, position, "B", f"B {subject}", BODY)


def auto_batch(enrollments: int, args) -> int:
    """A batch size that keeps work queued for most of the run, not drained in a minute.

    Roughly: the lease holder sends one batch per campaign per tick, and each HTTP
    client presses about once a second; aim to run dry at ~85% of the duration.
    `enrollments` counts messages: enrollments times steps.
    """
    per_second = args.campaigns / args.tick + args.clients * 0.8
    return max(1, min(50, math.ceil(enrollments / (0.85 * args.duration * per_second))))


def start_smtp(workdir: Path, port: int, faults: dict, bounce: list[str], seed: int) -> subprocess.Popen:
    """Start the fault-injecting SMTP server; return once it listens."""
    config = {"port": port, "faults": faults, "bounce": bounce, "seed": seed,
              "events": str(workdir / "smtp-events.jsonl")}
    path = workdir / "smtp-config.json"
    path.write_text(json.dumps(config, indent=1))
    log = (workdir / "smtp.log").open("ab")
    proc = subprocess.Popen([PYTHON, "-m", "chaos.smtp_server", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline().strip()
    if line != f"ready {port}":
        proc.kill()
        raise RuntimeError(f"SMTP server did not start ({line!r}); see {workdir / 'smtp.log'}")
    return proc
