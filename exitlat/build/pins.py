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
                         debian_version=deb.get("version"))

    def sources(self) -> list[SourcePin]:
        return [self.source(n) for n in sorted(self.raw["sources"])]

    @property
    def emulated_host(self) -> "EmulatedHostPins":
        """The inputs of `invoke selftest` (the optional `emulated_host` section; `invoke build`
        never reads it)."""
        e = self.raw.get("emulated_host")
        if e is None:
            raise ExitlatError(f"{self.path}: no emulated_host section (needed by `invoke selftest`)")
        k = e["kernel"]
        deb = k.get("debian") or {}
        kernel = SourcePin(name="emulated_host.kernel", version=str(k["version"]), file=k["file"],
                           sha256=k["sha256"], urls=tuple(k["urls"]),
                           debian_source=deb.get("source"), debian_version=deb.get("version"))
        return EmulatedHostPins(kernel=kernel, modules=tuple(e["modules"]),
                                packages=dict(e["packages"]))


@dataclass(frozen=True)
class EmulatedHostPins:
    kernel: SourcePin               # the L1 kernel's Debian binary package
    modules: tuple[str, ...]        # loaded in this order in L1
    packages: dict[str, str]        # the L1 userland's Debian packages, exact versions


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
