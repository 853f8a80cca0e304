"""Source providers: fetch each pinned input from a mirror folder, an upstream URL or the Debian
archive, in that order, always checking the sha256. Verified files are cached by checksum."""

import hashlib
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.paths import cache_root
from .pins import Pins, SourcePin

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Fetched:
    pin: SourcePin
    path: Path
    provider: str  # "cache", "mirror", "upstream" or "debian"
    origin: str    # the folder or URL it came from


def content_problem(pin: SourcePin, path: Path) -> str | None:
    """None when the pin names no git tree or the archive's content has it, else why not: the
    content check beside the sha256, for archives a forge makes on the fly."""
    if not pin.git_tree:
        return None
    from .gittree import tree_id

    try:
        got = tree_id(path)
    except ExitlatError as err:
        return f"content check failed: {err}"
    if got != pin.git_tree:
        return f"content mismatch (git tree {got[:12]}…, pinned {pin.git_tree[:12]}…)"
    return None


class ChecksumMismatch(ExitlatError):
    pass


class Cancelled(ExitlatError):
    pass


# A name lookup or connection that fails for a moment (a resolver hiccup) is tried again before
# the next provider is: a cold build fetches dozens of files, and one lost lookup stopped it.
RETRY_DELAYS_S = (2.0, 5.0)


def _transient(err: BaseException) -> bool:
    """A failure another try may not repeat: no HTTP answer at all (name lookup, refused or reset
    connection, timeout). An HTTP error status is an answer, and is not retried."""
    if isinstance(err, urllib.error.HTTPError):
        return False
    return isinstance(err, (urllib.error.URLError, TimeoutError, ConnectionError))


def _download(url: str, dest: Path, timeout: float, progress=None, stop=None,
              delays=RETRY_DELAYS_S, log=None) -> None:
    for delay in (*delays, None):
        try:
            return _download_once(url, dest, timeout, progress, stop)
        except OSError as err:
            if delay is None or not _transient(err) or (stop is not None and stop.is_set()):
                raise
            if log:
                log(f"  {url}: {getattr(err, 'reason', None) or err}; trying again in {delay:.0f}s")
            if stop is not None and stop.wait(delay):
                raise Cancelled(f"download of {url} stopped") from None
            if stop is None:
                time.sleep(delay)


def _download_once(url: str, dest: Path, timeout: float, progress=None, stop=None) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "exitlat"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while block := resp.read(CHUNK):
            if stop is not None and stop.is_set():
                raise Cancelled(f"download of {url} stopped")
            out.write(block)
            done += len(block)
            if progress:
                progress(done, total)


MIRROR_ENV = "EXITLAT_MIRROR"


class SourceFetcher:
    """Tries providers in order; each failure is remembered so the final error names all of them."""

    def __init__(self, pins: Pins, mirror: Path | str | None = None, cache: Path | None = None,
                 timeout: float = 30.0, use_network: bool = True, log=print,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS_S):
        self.pins = pins
        self.retry_delays = retry_delays
        # --mirror, else EXITLAT_MIRROR: a folder of pinned files to try first (CI points it at
        # the shared mirror, which holds the inputs no reachable registry serves)
        from_env = not mirror and bool(os.environ.get(MIRROR_ENV))
        mirror = mirror or os.environ.get(MIRROR_ENV) or None
        self.mirror = Path(mirror) if mirror else None
        self.cache = Path(cache) if cache else cache_root() / "sources"
        self.timeout = timeout
        self.use_network = use_network
        self.log = log
        self.stop = threading.Event()   # set by cancel(): downloads in other threads end early
        if self.mirror is not None:
            if not self.mirror.exists():
                raise ExitlatError(f"mirror folder not found: {self.mirror}"
                                   + (f" (from {MIRROR_ENV})" if from_env else ""))
            if not self.mirror.is_dir():
                raise ExitlatError(f"mirror {self.mirror} is a file; give the folder that holds "
                                   "the files named as in pins.yaml")
            try:
                os.listdir(self.mirror)
            except OSError as err:
                raise ExitlatError(f"cannot read the mirror folder {self.mirror}: {err.strerror}") from None

    def cancel(self) -> None:
        """Stop every download under way (from any thread); their fetch() raises Cancelled."""
        self.stop.set()

    def candidates(self, pin: SourcePin) -> list[tuple[str, str]]:
        found = []
        if self.mirror is not None:
            found.append(("mirror", str(self.mirror / pin.file)))
        if self.use_network:
            found += [("upstream", u) for u in pin.urls]
            deb = pin.debian_pool_url(self.pins.debian_archive)
            if deb:
                found.append(("debian", deb))
        return found

    def fetch(self, pin: SourcePin) -> Fetched:
        cached = self.cache / pin.sha256[:16] / pin.file
        first = cached.parent / (pin.file + ".origin")   # who served it the first time
        if cached.is_file() and not content_problem(pin, cached) and (
                sha256_file(cached) == pin.sha256 or pin.git_tree):
            origin = first.read_text().strip() if first.is_file() else "unknown"
            return Fetched(pin, cached, "cache", f"{cached} (first from {origin})")
        cached.parent.mkdir(parents=True, exist_ok=True)
        problems = []
        for provider, origin in self.candidates(pin):
            fd, tmp_name = tempfile.mkstemp(dir=cached.parent, prefix=".part-")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                if provider == "mirror" or origin.startswith("file://"):
                    src = Path(origin.removeprefix("file://"))
                    if not src.is_file():
                        problems.append(f"{provider}: {src} not found")
                        continue
                    shutil.copyfile(src, tmp)
                else:
                    self.log(f"  downloading {pin.file} from {origin}")
                    _download(origin, tmp, self.timeout, stop=self.stop,
                              delays=self.retry_delays, log=self.log)
                got = sha256_file(tmp)
                content = content_problem(pin, tmp)
                if content:
                    problems.append(f"{provider}: {content}")
                    continue
                if got != pin.sha256 and not (pin.git_tree and provider == "upstream"):
                    problems.append(f"{provider}: checksum mismatch (got {got[:12]}…, "
                                    f"pinned {pin.sha256[:12]}…)")
                    continue
                if got != pin.sha256:    # a forge's own archive of the pinned tree: same content
                    origin = f"{origin} (archive sha256 {got[:12]}…, content: git tree {pin.git_tree[:12]}… ok)"
                os.replace(tmp, cached)
                first.write_text(f"{provider}: {origin}\n")
                return Fetched(pin, cached, provider, origin)
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", None) or err
                problems.append(f"{provider}: {origin}: {reason}")
            finally:
                tmp.unlink(missing_ok=True)
        if not problems:
            problems.append("no provider configured (give --mirror DIR or allow the network)")
        mismatch = any("mismatch" in p for p in problems)
        cls = ChecksumMismatch if mismatch else ExitlatError
        hint = "" if mismatch or self.mirror is not None else (
            f" (put {pin.file} in a folder and give it as --mirror DIR or {MIRROR_ENV}=DIR)")
        raise cls(f"cannot get {pin.name} {pin.version} ({pin.file}): " + "; ".join(problems) + hint)

    def fetch_all(self) -> dict[str, Fetched]:
        return {pin.name: self.fetch(pin) for pin in self.pins.sources()}
