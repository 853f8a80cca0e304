"""vmexit.flat's serial output: one line per test, `<name> <cycles>` (the mean of
(t2 - t1) / iterations over its last, longest round), `<name> (skipped)`, and for the IPI tests
indented `ipi`/`eoi` lines. Everything else (the test OS's banner, pci-testdev) is ignored."""

from __future__ import annotations

import re

LINE = re.compile(r"^(?P<name>[a-z0-9_-]+) (?P<value>-?\d+)\s*$")
SKIPPED = re.compile(r"^(?P<name>[a-z0-9_-]+) \(skipped\)\s*$")


def parse_output(text: str, wanted) -> tuple[dict[str, int], list[str]]:
    """({test: cycles}, [skipped tests]) for the tests in `wanted`; other lines are ignored."""
    values: dict[str, int] = {}
    skipped: list[str] = []
    for raw in text.replace("\r", "").splitlines():
        m = LINE.match(raw)
        if m and m["name"] in wanted:
            values[m["name"]] = int(m["value"])
            continue
        m = SKIPPED.match(raw)
        if m and m["name"] in wanted:
            skipped.append(m["name"])
    return values, skipped
