"""The bundle document: its format constants, its schema check, its JSON encoding, and the facts
every reader takes from it (the TSC rate, the entries, the banner above its numbers)."""

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np

from exitlat.errors import ExitlatError
from exitlat.instructions import TABLE
SCHEMA_VERSION = 3


# v1: one traced window per case (before timed/traced windows); v1-2: one `iterations` per entry
# and traced window, the kept samples in one and the requested count in the other (normalize)
READABLE_VERSIONS = (1, 2, 3)


BUNDLE_JSON = "bundle.json"


SUMS = "SHA256SUMS"


SAMPLES_DIR = "samples"


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


FILE_RE = NAME_RE           # sample keys and extra file names: the same rule as bundle names


TCG_BANNER = "TCG: software emulation — these are NOT VM-exit timings"


def banner_for(doc: dict) -> str | None:
    """The line that must stand above any number of this bundle (TCG, or an emulated KVM host such
    as the selftest's), or None for a measurement on a real VMX/SVM host."""
    if doc.get("accel") == "tcg":
        return TCG_BANNER
    emulated = (doc.get("host") or {}).get("emulated")
    if emulated:
        return f"{emulated} (NOT VM-exit timings)"
    return None


def normalize(doc: dict) -> dict:
    """The document in the current version's names, for readers (the file stays as written): in
    versions 1-2 an entry's `iterations` was its kept samples and a traced window's its requested
    count; both now say which (`samples_kept`, `iterations_requested`)."""
    if doc.get("schema_version", SCHEMA_VERSION) >= 3:
        return doc
    asked = (doc.get("options") or {}).get("iterations")
    for e in doc.get("cases", []) + doc.get("baselines", []):
        if "iterations" in e:
            e["samples_kept"] = e.pop("iterations")
            e["iterations_requested"] = asked if isinstance(asked, int) else e["samples_kept"]
        vw = e.get("verification_window")
        if isinstance(vw, dict) and "iterations" in vw:
            vw["iterations_requested"] = vw.pop("iterations")
            vw["samples_kept"] = (vw.get("stats") or {}).get("n", 0)
    return doc


def schema() -> dict:
    """The bundle schema, with the instructions a case may run taken from the instruction table
    (the one list of them: exitlat/instructions.py)."""
    doc = json.loads(resources.files("exitlat.schemas").joinpath("bundle.schema.json").read_text())
    doc["$defs"]["case"]["properties"]["instruction"]["enum"] = [
        n for n, i in TABLE.items() if i.cases]
    return doc


def _where(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(top level)"


def validate_doc(doc: dict, what: str = BUNDLE_JSON) -> None:
    """Schema check with one line naming the first (deepest-path-first) problem."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        msg = err.message if len(err.message) <= 200 else err.message[:200] + "..."
        raise ExitlatError(f"{what}: schema violation at {_where(err)}: {msg}")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dump_doc(doc: dict) -> bytes:
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ExitlatError(f"bundle document cannot be stored as JSON: {err}") from None
    return (text + "\n").encode()


def tsc_hz_of(doc: dict) -> float | None:
    """The TSC rate used for ns: the host's, else the one the guest kernel reported."""
    hz = (doc.get("host") or {}).get("tsc", {}).get("hz")
    if hz:
        return float(hz)
    khz = (doc.get("guest") or {}).get("tsc_khz")
    return float(khz) * 1000.0 if khz else None


def entries(doc: dict) -> list[dict]:
    return list(doc.get("cases", [])) + list(doc.get("baselines", []))
