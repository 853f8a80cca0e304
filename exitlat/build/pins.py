"""pins.yaml: every build input by exact version and sha256, validated by a JSON Schema."""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT

DEFAULT_PINS = REPO_ROOT / "pins.yaml"


@dataclass(frozen=True)
class SourcePin:
    name: str
    version: str
    file: str
    sha256: str
    urls: tuple[str, ...]
    debian_source: str | None
    debian_version: str | None
    git_tree: str | None = None    # the content's git tree id (exitlat.build.gittree), when pinned
    commit: str | None = None
    tag: str | None = None

    def debian_pool_url(self, archive: str) -> str | None:
        """Where the Debian archive keeps this file: pool/main/<prefix>/<source package>/<file>."""
        if not self.debian_source:
            return None
        src = self.debian_source
        prefix = src[:4] if src.startswith("lib") else src[0]
        return f"{archive.rstrip('/')}/pool/main/{prefix}/{src}/{self.file}"


@dataclass(frozen=True)
class Pins:
    path: Path
    raw: dict

    @property
    def source_date_epoch(self) -> int:
        return int(self.raw["source_date_epoch"])

    @property
    def base(self) -> dict:
        return self.raw["base"]

    @property
    def toolchain(self) -> dict[str, str]:
        return dict(self.raw["toolchain"])

    @property
    def debian_archive(self) -> str:
        return self.raw["debian_archive"]

    def source(self, name: str) -> SourcePin:
        try:
            s = self.raw["sources"][name]
        except KeyError:
            raise ExitlatError(f"{self.path}: no source named {name!r} in sources") from None
        deb = s.get("debian") or {}
        return SourcePin(name=name, version=str(s["version"]), file=s["file"], sha256=s["sha256"],
                         urls=tuple(s["urls"]), debian_source=deb.get("source"),
                         debian_version=deb.get("version"), git_tree=s.get("git_tree"),
                         commit=s.get("commit"), tag=s.get("tag"))

    def sources(self) -> list[SourcePin]:
        return [self.source(n) for n in sorted(self.raw["sources"])]

    @property
    def emulated_host(self) -> "EmulatedHostPins":
        """The inputs of `invoke selftest` (the optional `emulated_host` section; `invoke build`
        never reads it)."""
        e = self.raw.get("emulated_host")
        if e is None:
            raise ExitlatError(f"{self.path}: no emulated_host section (needed by `invoke selftest`)")
        kernels = {}
        for series, k in e["kernels"].items():
            deb = k.get("debian") or {}
            kernels[series] = SourcePin(
                name=f"emulated_host.kernels.{series}", version=str(k["version"]), file=k["file"],
                sha256=k["sha256"], urls=tuple(k["urls"]), debian_source=deb.get("source"),
                debian_version=deb.get("version"))
        if e["default_kernel"] not in kernels:
            raise ExitlatError(f"{self.path}: field emulated_host.default_kernel: "
                               f"{e['default_kernel']!r} is not one of emulated_host.kernels")
        return EmulatedHostPins(kernels=kernels, default_kernel=e["default_kernel"],
                                modules={v: tuple(m) for v, m in e["modules"].items()},
                                packages=dict(e["packages"]),
                                bochs_packages={n: dict(d) for n, d in e["bochs"]["packages"].items()},
                                bochs_tools=dict(e["bochs"]["tools"]))


@dataclass(frozen=True)
class EmulatedHostPins:
    kernels: dict[str, SourcePin]   # the L1 kernels' Debian binary packages, by series ("6.12")
    default_kernel: str
    modules: dict[str, tuple[str, ...]]   # per vendor: what L1 needs (dependencies come from the package)
    packages: dict[str, str]        # the L1 userland's Debian packages, exact versions
    bochs_packages: dict[str, dict]  # the emulated VT-x machine: name -> version, file, sha256
    bochs_tools: dict[str, str]     # what makes L1's boot CD, exact versions

    def kernel(self, series: str | None = None) -> SourcePin:
        """The L1 kernel of a series (None: the default); an unknown series is one line."""
        series = self.default_kernel if series in (None, "") else str(series)
        if series not in self.kernels:
            raise ExitlatError(f"unknown --kernel {series!r}; pins.yaml names "
                               f"{', '.join(sorted(self.kernels))}")
        return self.kernels[series]


def schema() -> dict:
    return json.loads(resources.files("exitlat.schemas").joinpath("pins.schema.json").read_text())


def _field_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def load_pins(path: Path | str | None = None) -> Pins:
    """Read and validate a pins file; any problem is one ExitlatError naming the field."""
    path = Path(path) if path else DEFAULT_PINS
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExitlatError(f"pins file not found: {path}") from None
    except IsADirectoryError:
        raise ExitlatError(f"pins file {path} is a folder, not a file") from None
    except OSError as err:
        raise ExitlatError(f"cannot read pins file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ExitlatError(f"{path}: not a text file (not valid UTF-8)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ExitlatError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ExitlatError(f"{path}: expected a mapping at the top level")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ExitlatError(f"{path}: field {_field_path(err)}: {err.message}")
    return Pins(path=path, raw=raw)
