"""The tests' aiosmtpd sink (tests/smtp_sink.py) in a process of its own.

In its own process the sink's event loop does not compete for the bench's GIL, so the
engine and the bare smtplib loop both see the same, independent server. Prints its port,
then answers "count" with the number of messages received so far, "stats" with a JSON
line {"total", "distinct", "duplicates"} counted by recipient since the last "reset"
(which forgets them); "quit" (or EOF) stops it.

`--delay 0.1` answers each final dot after 100 ms, as a remote server does (a coroutine
sleeping, so many connections wait in parallel, as they would on a real server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from tests.smtp_sink import Recorder, SmtpSink


class SlowRecorder(Recorder):
    """The tests' Recorder, answering the final dot after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def _stats(recorder: Recorder) -> str:
    with recorder.lock:
        counts = recorder.received.values()
        return json.dumps({"total": sum(counts), "distinct": len(counts),
                           "duplicates": sum(c - 1 for c in counts if c > 1)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an aiosmtpd sink for the bench")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering the final dot")
    args = parser.parse_args(argv)
    sink = SmtpSink()
    sink.recorder = SlowRecorder(args.delay)
    sink.controller.handler = sink.recorder
    with sink:
        print(sink.port, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command in ("count", "stats"):
                with sink.recorder.lock:
                    total = sum(sink.recorder.received.values())
                    sink.recorder.messages.clear()  # only the counts matter; keep memory flat
                print(total if command == "count" else _stats(sink.recorder), flush=True)
            elif command == "reset":
                with sink.recorder.lock:
                    sink.recorder.received.clear()
                print("ok", flush=True)
            elif command == "quit":
                break


if __name__ == "__main__":
    main()
