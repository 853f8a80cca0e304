"""`report --html` and `compare --html`: one self-contained page, made through the real CLI and
loaded in a real headless browser (Chromium): it must render without a console message, and the
rendered DOM must hold every case, every bundle, the highlighted setup differences and the
banners. Screenshots go to the test's folder and to /tmp/html-shots/ to be looked at.

Without Chromium the browser tests skip, unless EXITLAT_REQUIRE_BROWSER=1 (CI), where they fail."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bundle_fixtures import make_bundle
from cli_support import invoke
from exitlat.bundle.read import load_bundle
from exitlat.bundle.format import TCG_BANNER
from exitlat.report.compare import compare
from exitlat.report.html import render_page

REPO = Path(__file__).resolve().parent.parent
SHOTS = Path("/tmp/html-shots")
CASES = ("case1 cpuid rdtscp", "case2 outb rdtscp", "case5 cpuid rdtscp")
# a host name that would run a script (and log to the console) if the page did not escape it
EVIL = "edge\"<img src=x onerror=\"console.error('not escaped')\">"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("EXITLAT_REQUIRE_BROWSER") == "1":
        pytest.fail("EXITLAT_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH: install it (apt-get install chromium) to render the pages; "
                "EXITLAT_REQUIRE_BROWSER=1 turns this skip into a failure")


def console_lines(stderr: str) -> list[str]:
    """What the page logged: Chromium writes console messages and uncaught errors to stderr with
    --enable-logging=stderr ('...:INFO:CONSOLE(1)] "message", source: ...')."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def browse(page: Path, out: Path, shot_name: str) -> str:
    """Screenshot and DOM of the page as Chromium renders it (no network: every host name
    resolves to nothing); fails on any console message. Returns the DOM."""
    exe = chromium()
    common = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
              "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={out / 'profile'}"]
    url = page.resolve().as_uri()
    shot = out / "page.png"
    r = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1400,3000", url],
                       capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 20_000, (r.returncode, r.stderr[-2000:])
    assert console_lines(r.stderr) == [], console_lines(r.stderr)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SHOTS / shot_name)
    r = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    assert console_lines(r.stderr) == [], console_lines(r.stderr)
    return r.stdout


class _Refs(HTMLParser):
    """Tags and the references in their attributes, as a browser would see them."""

    def __init__(self):
        super().__init__()
        self.tags, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action", "poster") or (v and "url(" in v):
                self.refs.append(v or "")


def self_contained(html: str) -> None:
    """Nothing that a browser would fetch or run: no script, no link, no remote reference."""
    p = _Refs()
    p.feed(html)
    assert not p.tags & {"script", "link", "iframe", "object", "embed", "img", "base"}, p.tags
    assert all(r.startswith(("#", "data:")) or "url(#" in r for r in p.refs), p.refs
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    assert "url(" not in style and "@import" not in style


def text_of(dom: str) -> str:
    """The DOM's text (tags dropped, entities decoded), for 'does the reader see X'."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def _other_host(d):
    d["host"]["hostname"] = "bench02"
    d["host"]["cpu"].update(vendor="AuthenticAMD", model_name="AMD EPYC 7763 64-Core Processor",
                            family=25, model=1, stepping=1, microcode="0xa0011d1")
    d["host"]["kvm"]["module"] = "kvm_amd"


def _third_host(d):
    d["host"]["hostname"] = EVIL
    d["host"]["cpu"]["microcode"] = "0xd0003b9"          # same CPU model, newer microcode
    d["label"] = "<b>label</b>"


def test_report_html_in_browser(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1, 2, 5), repeats=3)
    page = tmp_path / "report.html"
    r = invoke("report", "A", "--html", page, results=res)
    assert r.returncode == 0, r.stderr
    assert "case1-r0" in r.stdout and f"html: {page}" in r.stderr     # the text report as well
    html = page.read_text()
    self_contained(html)
    dom = browse(page, tmp_path, "report-one-bundle.png")
    text = text_of(dom)
    for case in CASES:
        assert case in text, case
    for needle in ("exitlat report: A", "bench01", "Intel Xeon Gold 6338", "verdict: measured on real "
                   "hardware", "exit reasons CPUID", "passed", "CI95", "6.8.0-45-generic", "9.0.2"):
        assert needle in text, needle
    assert dom.count("<svg") == len(CASES)              # one figure per case, inline
    assert "NOT VM-exit timings" not in text


def test_compare_html_three_hosts_in_browser(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1, 2, 5), repeats=3)
    make_bundle(res, "B", cases=(1, 2, 5), repeats=3, seed=2, scale=1.2, edit=_other_host)
    make_bundle(res, "C", cases=(1, 2, 5), repeats=3, seed=3, edit=_third_host)
    (tmp_path / "fleet").mkdir()
    page = tmp_path / "fleet" / "compare.html"
    r = invoke("compare", "A", "B", "C", "--html", page, results=res)   # options after the bundles
    assert r.returncode == 0, r.stderr
    assert "C median, C/A [CI95]" in r.stdout
    html = page.read_text()
    self_contained(html)
    assert EVIL not in html and "&lt;img src=x" in html and "<b>label</b>" not in html
    dom = browse(page, tmp_path, "compare-three-bundles.png")
    text = text_of(dom)
    for case in CASES:
        assert case in text, case
    for name, host, cpu in (("A", "bench01", "Intel Xeon Gold 6338"), ("B", "bench02", "AMD EPYC 7763"),
                            ("C", EVIL, "Intel Xeon Gold 6338")):
        assert f"{name} {host}" in re.sub(r"\s+", " ", text), name        # letter and host label
        assert cpu in text
    assert "<img" not in dom                            # the host name stayed text
    assert dom.count("<svg") == len(CASES)
    # setup differences: the microcode row is highlighted, C's cell (and B's) marked
    row = re.search(r'<tr class="differs"><td class="lab">microcode</td>(.*?)</tr>', dom)
    assert row, "microcode row not highlighted"
    assert '<td class="neq">0xd0003b9</td>' in row.group(1) and '<td>0xd0003a5</td>' in row.group(1)
    assert re.search(r'<tr><td class="lab">QEMU version</td>', dom)           # equal: not highlighted
    assert "unfair: CPU differs in C: microcode '0xd0003a5'→'0xd0003b9'" in text
    assert "KVM module differs" in text
    res_ = compare([load_bundle(res / n) for n in "ABC"])             # the ratios compare prints
    for row in res_["rows"]:
        if row["entry"].startswith(CASES):
            assert f"{row['cells'][1]['ratio']:.3f}" in text and f"{row['cells'][2]['ratio']:.3f}" in text
    assert "NOT VM-exit timings" not in text


@pytest.mark.parametrize("kind", ["tcg", "emulated"])
def test_not_exit_timings_banner_is_first_and_last(tmp_path, kind):
    if kind == "tcg":
        b = load_bundle(make_bundle(tmp_path, "T", cases=(1, 2), accel="tcg"))
        banner = TCG_BANNER
    else:
        b = load_bundle(make_bundle(tmp_path, "E", cases=(1, 2), edit=lambda d: d["host"].update(
            emulated="emulated AMD-V host (nested under TCG)")))
        banner = b.banner
    ok = load_bundle(make_bundle(tmp_path, "K", cases=(1, 2), seed=4))
    for page in (render_page([b]), render_page([ok, b])):
        self_contained(page)
        body = page[page.index("<body>"):]
        first_banner = body.index('<div class="banner"')
        assert first_banner < body.index("<table") and first_banner < body.index("verdict")
        assert body.count(f"⚠ {banner}") == 2                         # top and bottom
        assert "NOT VM-exit timings" in banner
        assert 'class="verdict v-bad"' in page and "not (all) trustworthy" in page


def test_incomplete_and_not_isolated_reach_the_verdict(tmp_path):
    def edit(d):
        d["status"] = {"state": "incomplete", "reason": "interrupted <Ctrl-C>"}
        d["isolation"] = {"isolated": False, "items": [{"name": "governor", "ok": False,
                                                        "detail": "powersave"}]}
        d["cases"][0]["verification"]["status"] = "failed"
    page = render_page([load_bundle(make_bundle(tmp_path, "I", cases=(1, 2), edit=edit))])
    for needle in ("INCOMPLETE: interrupted &lt;Ctrl-C&gt;", "core NOT isolated",
                   "isolation: governor: powersave", "exit path verification FAILED", "1 FAILED",
                   'class="verdict v-bad"'):
        assert needle in page, needle


def test_html_bad_inputs_are_one_line(tmp_path):
    res = tmp_path / "results"
    make_bundle(res, "A", cases=(1,), baselines=False)
    make_bundle(res, "B", cases=(1,), baselines=False, seed=2)
    for args in (("report", "A", "--html", tmp_path / "missing" / "r.html"),
                 ("compare", "A", "B", "--html", tmp_path / "missing" / "c.html"),
                 ("report", "A", "--html", tmp_path),
                 ("report", "A", "--html", res / "A" / "inside.html"),
                 ("compare", "A", "B", "--html", "-", "--json")):
        r = invoke(*args, results=res)
        err = r.stderr.strip()
        assert r.returncode != 0 and len(err.splitlines()) == 1 and err.startswith("error: "), (args, err)
    assert not (tmp_path / "missing").exists()
    load_bundle(res / "A")                                             # the bundle is untouched
    r = invoke("report", "A", "--html", "-", results=res)
    assert r.returncode == 0 and r.stdout.startswith("<!DOCTYPE html>") and "case1-r0" in r.stdout


def test_the_browser_check_sees_console_errors(tmp_path):
    """The console check above is real: a page that throws is caught by it."""
    exe = chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>noSuchFunction();</script></body></html>")
    r = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                        "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", bad.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert any("noSuchFunction" in line for line in console_lines(r.stderr)), r.stderr[-2000:]
