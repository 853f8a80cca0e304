"""Progress lines for long steps: what is running, for how long, and the last thing it said."""

import sys
import time


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Progress:
    def __init__(self, stream=None, heartbeat_s: float = 20.0):
        self.stream = stream or sys.stderr
        self.heartbeat_s = heartbeat_s
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{fmt_duration(time.monotonic() - self.t0):>7}] {msg}", file=self.stream, flush=True)

    def heartbeat(self, what: str, started: float, last_line: str, state: dict) -> None:
        """Print at most every heartbeat_s: '<what> running for 2m10s: <last line>'."""
        now = time.monotonic()
        if now - state.get("last", started) >= self.heartbeat_s:
            state["last"] = now
            self.say(f"{what}: {fmt_duration(now - started)} … {last_line[:100]}")
