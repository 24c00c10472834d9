"""What-if replay benchmark (issue 14): `stepguard policy replay` over a busy site's ledger.

A SQLite ledger is filled (fixed seed) with the entries a busy site writes in summary mode:
plain-allow summaries (one per session, rule, minute, IP and decision input; several requests
each) and single entries for everything else (step-ups, denies, aal2 allows), each with its
recorded decision input. Then, in the same run:

* **anchor (read floor)** — read every decision entry of the period from the store, page by page
  through the `at` index, and rebuild each recorded request (JSON parsed, contexts and sessions
  built): everything replay does except deciding;
* **replay** — the same, plus `decide()` with a candidate policy and the per-rule counts.

It prints entries/s and requests/s for both, replay as a fraction of the floor (target ≥ 0.5×:
deciding must not dominate), and what a week of the modelled busy site takes
(`--users`, `--hours`, `--sealed-per-hour`; defaults: 2,000 users active 8 h a day, each
session writing one summary per active minute, plus 60 sealed decisions per user per active
hour). Run: `python bench/replay.py` (about a minute); `--entries` for a bigger ledger.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from stepguard.audit.commands import replay_store
from stepguard.audit.ledger import AuditEvent
from stepguard.audit.replay import DecisionInput, recorded_requests, replay
from stepguard.config.load import load_policy
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.levels import Level
from stepguard.core.risk import RiskAssessment
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.migrate import upgrade
from stepguard.storage.sql import SqlStore

EXAMPLE = Path(__file__).parents[1] / "examples" / "policy.yaml"
T0 = 1_900_000_000.0
PATHS = ["/dashboard", "/accounts", "/accounts/42", "/customers/7", "/admin/users",
         "/transfers", "/customers/export", "/static/app.css", "/settings", "/reports/q1"]


def events(n: int, rng: random.Random) -> list[AuditEvent]:
    made: list[AuditEvent] = []
    for i in range(n):
        at = T0 + i * 0.5
        level = Level.AAL2 if rng.random() < 0.4 else Level.AAL1
        state = SessionState(
            id=f"s{i % 5000}", subject=Subject(id=f"u{i % 2000}", groups=frozenset({"staff"})),
            created=at - 3600, last_seen=at - 5,
            events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=at - 3600),
                    *((AuthEvent(factor="totp", amr=("otp",), level=level, at=at - 600),)
                      if level is Level.AAL2 else ())))
        ip = f"10.{rng.randrange(30)}.{rng.randrange(255)}.{rng.randrange(1, 255)}"
        path = rng.choice(PATHS)
        context = RequestContext(method="GET", host="bank.example.com", path=path,
                                 client_ip=ip)
        summary = rng.random() < 0.7
        detail: dict[str, object] = {
            "risk_score": 0, "risk_level": "low", "signals": [],
            "input": DecisionInput(context, state, (), frozenset(), RiskAssessment())}
        if summary:
            requests = [["GET", rng.choice(PATHS), rng.randrange(1, 12)] for _ in range(4)]
            detail.update(count=sum(r[2] for r in requests), first=at - 50, last=at,
                          interval=60.0, paths=[r[1] for r in requests], requests=requests,
                          unlisted=0)
        made.append(AuditEvent(
            at=at, kind="decision", subject=state.subject.id,
            request={"method": "GET", "host": "bank.example.com", "path": path,
                     "client_ip": ip},
            decision="allow", rule="default", outcome="allow_summary" if summary else "allow",
            detail=detail))
    return made


def floor(log: SqlAuditLog, since: float) -> tuple[int, int]:
    entries = requests = 0
    for entry in log.entries(kind="decision", since=since):
        entries += 1
        requests += sum(r.count for r in recorded_requests(entry))
    return entries, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--sealed-per-hour", type=int, default=60)
    args = parser.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.db"
        upgrade(url)
        store = SqlStore.from_url(url)
        log = SqlAuditLog(store.engine, page_size=2000)
        start = time.perf_counter()
        made = events(args.entries, rng)
        for i in range(0, len(made), 5000):
            log.append_many(made[i:i + 5000])
        print(f"ledger: {args.entries:,} entries written in {time.perf_counter() - start:.1f} s "
              "(not timed below)")
        candidate = load_policy(EXAMPLE)
        t = time.perf_counter()
        entries, requests = floor(log, T0 - 1)
        floor_s = time.perf_counter() - t
        t = time.perf_counter()
        report = replay(log.entries(kind="decision", since=T0 - 1), candidate)
        replay_s = time.perf_counter() - t
        jobs = os.cpu_count() or 1
        t = time.perf_counter()
        sliced = replay_store(url, EXAMPLE, since=T0 - 1, until=T0 + args.entries, jobs=jobs)
        jobs_s = time.perf_counter() - t
        store.close()
    assert sliced.as_json() == report.as_json(), "sliced replay differs from one process"
    assert report.entries == entries and report.requests == requests
    rate, floor_rate = entries / replay_s, entries / floor_s
    print(f"anchor (read floor): {floor_rate:,.0f} entries/s, {requests / floor_s:,.0f} requests/s")
    print(f"replay:              {rate:,.0f} entries/s, {requests / replay_s:,.0f} requests/s "
          f"({report.changed:,} of {report.requests:,} requests would change)")
    ratio = rate / floor_rate
    print(f"  {'PASS' if ratio >= 0.5 else 'MISS'}  replay at {ratio:.2f}x the read floor "
          "(target >= 0.5x)")
    print(f"replay --jobs {jobs}:     {entries / jobs_s:,.0f} entries/s (same report)")
    week = 7 * args.users * args.hours * (60 + args.sealed_per_hour)
    print(f"a week of the modelled site: {week:,.0f} entries -> replay about "
          f"{week / rate / 60:,.1f} min in one process, {week / (entries / jobs_s) / 60:,.1f} min "
          f"with --jobs {jobs} (read floor {week / floor_rate / 60:,.1f} min)")


if __name__ == "__main__":
    main()
