"""A bundle's setup as plain values: the labels that name a bundle in a comparison (host and CPU
model), the rows of the HTML pages' side-by-side metadata table, and the metadata columns of the
CSV export. Values are read from the bundle document as they are; nothing is derived but text."""

import re

from exitlat.bundle.read import Bundle


def short_cpu(model_name) -> str:
    """'Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz' -> 'Intel Xeon Gold 6338': short enough for a
    column header, still telling CPU models apart."""
    s = re.sub(r"\((R|TM|r|tm)\)", "", str(model_name or "?"))
    s = re.sub(r"\s+(CPU\s+)?@.*$", "", s)
    s = re.sub(r"\s+\d+-Core Processor\s*$", "", s)
    s = re.sub(r"\s+(CPU|Processor)\s*$", "", s)
    return re.sub(r"\s+", " ", s).strip() or "?"


def letter(i: int) -> str:
    """Column letter of the i-th bundle: A..Z, then AA, AB, ..."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def column(b: Bundle, i: int) -> dict:
    """What names bundle i in a comparison: letter, bundle name, host, CPU model (full and short),
    accel, and `label` (host · short CPU model)."""
    h = b.doc["host"]
    cpu = h["cpu"].get("model_name")
    return {"letter": letter(i), "bundle": b.name, "host": h["hostname"], "cpu_model": cpu,
            "cpu": short_cpu(cpu), "accel": b.doc["accel"],
            "label": f"{h['hostname']} · {short_cpu(cpu)}"}


def _text(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def _items(iso: dict) -> dict[str, str]:
    """Isolation items (from `invoke doctor`) as name -> state text; only their usual fields."""
    items = iso.get("items") or []
    out = {}
    for i, item in enumerate(items.values() if isinstance(items, dict) else items):
        if not isinstance(item, dict):
            continue
        name = str(item.get("name") or item.get("id") or f"item {i}")
        state = "ok" if item.get("ok") is True else "NOT ok" if item.get("ok") is False else \
            str(item.get("status") or "?")
        detail = item.get("detail") or item.get("message") or item.get("current")
        out[name] = state + (f": {detail}" if detail else "")
    return out


GROUPS = ("host", "guest", "QEMU", "run", "isolation")


def _fixed_rows(b: Bundle) -> list[tuple[str, str, object]]:
    d = b.doc
    h, g, q, cpu = d["host"], d["guest"], d["qemu"], d["host"]["cpu"]
    tool = d.get("tool") or {}
    iso = d.get("isolation") or {}
    return [
        ("host", "host name", h["hostname"]),
        ("host", "CPU model", cpu.get("model_name")),
        ("host", "CPU vendor", cpu.get("vendor")),
        ("host", "family / model / stepping",
         f"{cpu.get('family')} / {cpu.get('model')} / {cpu.get('stepping')}"),
        ("host", "microcode", cpu.get("microcode")),
        ("host", "SMT", cpu.get("smt")),
        ("host", "TSC (Hz)", None if b.tsc_hz is None else f"{b.tsc_hz:,.0f}"),
        ("host", "TSC source", (h.get("tsc") or {}).get("source")),
        ("host", "kernel", h["kernel"].get("release")),
        ("host", "kernel version", h["kernel"].get("version")),
        ("host", "kernel cmdline", h["kernel"].get("cmdline")),
        ("host", "KVM module", h["kvm"].get("module")),
        ("host", "emulated host", h.get("emulated")),
        ("host", "Docker", h.get("docker_version")),
        ("guest", "guest kernel", g.get("kernel_release")),
        ("guest", "guest kernel config sha256", (g.get("kernel_config_sha256") or "")[:16] or None),
        ("guest", "busybox", g.get("busybox_version")),
        ("guest", "guest tsc_khz", g.get("tsc_khz")),
        ("guest", "invariant TSC", g.get("invariant_tsc")),
        ("guest", "APIC mode", g.get("apic_mode")),
        ("QEMU", "QEMU version", q.get("version")),
        ("run", "accel", d["accel"].upper()),
        ("run", "status", d["status"]["state"] + (f": {d['status']['reason']}"
                                                   if d["status"].get("reason") else "")),
        ("run", "created (UTC)", d["created_utc"]),
        ("run", "exitlat", f"{tool.get('version')}" + (f" {tool['commit'][:12]}" if tool.get("commit") else "")),
        ("run", "command line", d.get("command_line")),
        ("run", "label", d.get("label")),
        ("isolation", "isolated", iso.get("isolated")),
        ("isolation", "core", iso.get("core")),
    ]


def meta_rows(bundles: list[Bundle]) -> list[dict]:
    """The side-by-side metadata table: one row per field with one value (text) per bundle, and
    `differs` when the bundles do not all agree. KVM parameters, mitigations and isolation items
    get one row per key found in any bundle ('-' where a bundle lacks it)."""
    rows = []
    fixed = [_fixed_rows(b) for b in bundles]
    for j, (group, name, _) in enumerate(fixed[0]):
        rows.append((group, name, [_text(f[j][2]) for f in fixed]))
    dynamic = (
        ("host", "KVM", lambda b: b.doc["host"]["kvm"].get("parameters") or {}),
        ("host", "mitigation", lambda b: b.doc["host"].get("vulnerabilities") or {}),
        ("isolation", "", lambda b: _items(b.doc.get("isolation") or {})),
    )
    for group, prefix, get in dynamic:
        maps = [get(b) for b in bundles]
        keys = sorted({k for m in maps for k in m})
        for k in keys:
            rows.append((group, f"{prefix} {k}".strip(), [_text(m.get(k)) for m in maps]))
    order = {g: i for i, g in enumerate(GROUPS)}
    rows.sort(key=lambda r: order.get(r[0], len(order)))          # stable: fields keep their order
    return [{"group": g, "field": n, "values": v, "differs": len(set(v)) > 1} for g, n, v in rows]


# -- the CSV export's metadata columns (docs/bundles.md, "CSV export") --------------------------

META_COLUMNS = ["bundle", "host", "cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number",
                "cpu_stepping", "cpu_microcode", "smt", "tsc_hz", "host_kernel", "kvm_module",
                "qemu_version", "guest_kernel", "accel", "not_exit_timings", "isolated", "status",
                "created_utc", "exitlat_version", "exitlat_commit", "label"]


def meta_columns(b: Bundle) -> dict:
    d = b.doc
    h, cpu = d["host"], d["host"]["cpu"]
    tool = d.get("tool") or {}
    return {"bundle": b.name, "host": h["hostname"], "cpu_model": cpu.get("model_name"),
            "cpu_vendor": cpu.get("vendor"), "cpu_family": cpu.get("family"),
            "cpu_model_number": cpu.get("model"), "cpu_stepping": cpu.get("stepping"),
            "cpu_microcode": cpu.get("microcode"), "smt": cpu.get("smt"), "tsc_hz": b.tsc_hz,
            "host_kernel": h["kernel"].get("release"), "kvm_module": h["kvm"].get("module"),
            "qemu_version": d["qemu"].get("version"), "guest_kernel": d["guest"].get("kernel_release"),
            "accel": d["accel"], "not_exit_timings": b.banner,
            "isolated": (d.get("isolation") or {}).get("isolated"), "status": d["status"]["state"],
            "created_utc": d["created_utc"], "exitlat_version": tool.get("version"),
            "exitlat_commit": tool.get("commit"), "label": d.get("label")}
