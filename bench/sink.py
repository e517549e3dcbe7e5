"""The tests' aiosmtpd sink (tests/smtp_sink.py) in a process of its own.

In its own process the sink's event loop does not compete for the bench's GIL, so the
engine and the bare smtplib loop both see the same, independent server. Prints its port,
then answers "count" with the number of messages received so far; "quit" (or EOF) stops it.
"""

from __future__ import annotations

import sys

from tests.smtp_sink import SmtpSink


def main() -> None:
    with SmtpSink() as sink:
        print(sink.port, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                with sink.recorder.lock:
                    total = sum(sink.recorder.received.values())
                    sink.recorder.messages.clear()  # only the count matters; keep memory flat
                print(total, flush=True)
            elif line.strip() == "quit":
                break


if __name__ == "__main__":
    main()
