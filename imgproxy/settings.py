"""Settings: one TOML file plus IMGPROXY_SECTION__KEY overrides, parsed once into frozen dataclasses.

Every key is declared as a dataclass field; the field's type drives both TOML validation
and the conversion of environment strings, so a new key is one line here (and one in
config.example.toml, which a test checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FORMATS = ("jpg", "webp", "avif", "png")
TILE_FORMATS = ("jpg", "png", "webp")
ORIGIN_TYPES = ("file", "http", "rest", "s3", "ftp")
ENV_PREFIX = "IMGPROXY_"


class ConfigError(Exception):
    """Every problem found in a configuration, each naming its location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # empty: http://{host}:{port}
    cors_origins: tuple[str, ...] = ("*",)
    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0


@dataclass(frozen=True)
class StorageSettings:
    dir: str = "./var"
    cache_max_bytes: int = 20_000_000_000


@dataclass(frozen=True)
class ProcessingSettings:
    mode: str = "on-demand"
    workers: int = 2
    widths: tuple[int, ...] = (320, 640, 960, 1280, 1920, 2560)
    formats: tuple[str, ...] = ("webp", "jpg")
    placeholder_width: int = 32
    tile_size: int = 254
    tile_overlap: int = 1
    tile_format: str = "jpg"
    quality: int = 82
    job_timeout: float = 900.0
    max_queue: int = 100_000


@dataclass(frozen=True)
class ViewerSettings:
    first_view_wait: float = 10.0
    default_width: int = 1280
    max_age: int = 300
    memory_cache_bytes: int = 64_000_000


@dataclass(frozen=True)
class HooksSettings:
    on_demand_max_bytes: int = 3_000_000
    on_demand_max_side: int = 5000


@dataclass(frozen=True)
class LimitsSettings:
    max_source_bytes: int = 1_073_741_824
    max_pixels: int = 1_000_000_000
    allow_private_networks: bool = False
    allowed_hosts: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    fetch_timeout: float = 600.0
    max_upload_bytes: int = 20_000_000
    auth_failures: int = 20
    auth_window: float = 60.0
    fetch_retries: int = 2


@dataclass(frozen=True)
class OriginSettings:
    """One `[[origins]]` table; keys that do not apply to its `type` are rejected."""

    name: str
    type: str
    id_pattern: str | None = None
    extensions: tuple[str, ...] = ()
    # file
    root: str = ""
    path: str = "{id}"
    # http, rest
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    pointer: str = ""
    # s3
    bucket: str = ""
    key: str = "{id}"
    region: str = ""
    endpoint_url: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    # ftp
    host: str = ""
    port: int = 21
    user: str = "anonymous"
    password: str = field(default="", repr=False)
    tls: bool = False

    def __repr__(self) -> str:
        """Type, name and where it points, without credentials (URLs lose user info and query)."""
        where = {
            "file": self.root,
            "http": _redact_url(self.url),
            "rest": _redact_url(self.url),
            "s3": f"s3://{self.bucket}/{self.key}",
            "ftp": f"ftp://{self.host}:{self.port}/{self.path}",
        }.get(self.type, "")
        return f"OriginSettings(name={self.name!r}, type={self.type!r}, at={where!r})"

    def id_regex(self) -> re.Pattern[str] | None:
        """The compiled `id_pattern` (validated at load time)."""
        return re.compile(self.id_pattern) if self.id_pattern else None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


# Keys each origin type takes besides name, type, id_pattern and extensions.
ORIGIN_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required, optional)
    "file": (("root",), ("path",)),
    "http": (("url",), ("headers",)),
    "rest": (("url", "pointer"), ("headers",)),
    "s3": (("bucket",), ("key", "region", "endpoint_url", "access_key_id", "secret_access_key")),
    "ftp": (("host",), ("port", "user", "password", "path", "tls")),
}
# Which origin keys are URL/path templates that must mention {id}.
TEMPLATE_KEYS = {"file": "path", "http": "url", "rest": "url", "s3": "key", "ftp": "path"}
SECRET_KEYS = frozenset({"password", "secret_access_key", "access_key_id", "headers"})


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    viewer: ViewerSettings = field(default_factory=ViewerSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    origins: tuple[OriginSettings, ...] = ()
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.dir)

    def public_base(self) -> str:
        """The base of every absolute URL the API returns (server.public_url, else host:port)."""
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = self.server.host
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.server.port}"


SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "storage": StorageSettings,
    "processing": ProcessingSettings,
    "viewer": ViewerSettings,
    "hooks": HooksSettings,
    "limits": LimitsSettings,
}


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read `path` (TOML), apply `overrides` (a nested dict) and IMGPROXY_* variables, validate.

    Raises ConfigError listing every problem at once.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    if overrides:
        raw = _merge(raw, overrides)
    raw = _apply_env(raw, os.environ if env is None else env, problems)
    settings = _build(raw, source, problems)
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return settings


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """IMGPROXY_SERVER__PORT=9000 sets server.port; IMGPROXY_ORIGINS__0__ROOT sets origins[0].root."""
    out = dict(raw)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        value = env[name]
        if parts[0] == "origins" and len(parts) == 3 and parts[1].isdigit():
            origins = [dict(o) for o in out.get("origins", [])]
            index = int(parts[1])
            if index >= len(origins):
                problems.append(f"{name}: there is no origin number {index}")
                continue
            origins[index][parts[2]] = _env_value(OriginSettings, parts[2], value)
            out["origins"] = origins
        elif len(parts) == 2 and parts[0] in SECTIONS:
            section = dict(out.get(parts[0], {}))
            section[parts[1]] = _env_value(SECTIONS[parts[0]], parts[1], value)
            out[parts[0]] = section
        else:
            problems.append(f"{name}: no such setting ({'.'.join(parts)})")
    return out


def _env_value(cls: type[Any], key: str, text: str) -> Any:
    """Convert an environment string to the key's type; leave it a string when unsure (validation reports it)."""
    hints = typing.get_type_hints(cls)
    kind = hints.get(key)
    if kind is None:
        return text
    return _convert_env(kind, text)


def _convert_env(kind: Any, text: str) -> Any:
    base = _base_type(kind)
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            return text
        if base is int:
            return int(text.replace("_", ""))
        if base is float:
            return float(text)
        if base is tuple or base is Mapping:
            stripped = text.strip()
            if stripped.startswith(("[", "{")):
                return json.loads(stripped)
            items = [item.strip() for item in stripped.split(",") if item.strip()]
            if base is tuple:  # "320,640" for a tuple[int, ...] is a list of ints
                item_kind = (*typing.get_args(kind), str)[0]
                return [_convert_env(item_kind, item) for item in items]
            return items
    except ValueError:
        return text
    return text


def _base_type(kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return tuple
    if (origin is not None and origin in (Mapping, dict)) or kind is Mapping:
        return Mapping
    if origin is not None:
        return origin
    return kind


def _check_value(kind: Any, value: Any, where: str, problems: list[str]) -> Any:
    """Type-check one value against a field type, returning it in its settled form."""
    base = _base_type(kind)
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if value is None and optional:
        return None
    if base is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if base is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
        return value
    if base is tuple:
        item_kind = (*typing.get_args(kind), None)[0]
        if not isinstance(value, list | tuple):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        return tuple(
            _check_value(item_kind, item, f"{where}[{i}]", problems) for i, item in enumerate(value)
        )
    if base is Mapping:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            problems.append(f"{where}: expected a table of strings, got {value!r}")
            return value
        return dict(value)
    return value


def _build_section(cls: type[Any], raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"[{where}]: expected a table, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(f"{where}.{key}: unknown key")
            continue
        before = len(problems)
        checked = _check_value(hints[key], value, f"{where}.{key}", problems)
        if len(problems) == before:  # a mistyped value keeps its default, so checks can go on
            values[key] = checked
    try:
        return cls(**values)
    except TypeError as exc:
        problems.append(f"[{where}]: {exc}")
        return cls()


def _build(raw: dict[str, Any], source: str, problems: list[str]) -> Settings:
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            sections[key] = _build_section(SECTIONS[key], value, key, problems)
        elif key != "origins":
            problems.append(f"{key}: unknown section")
    origins_raw = raw.get("origins", [])
    origins: list[OriginSettings] = []
    positions: list[int] = []  # each origin's index in the file, for messages after a drop
    if not isinstance(origins_raw, list):
        problems.append("origins: expected [[origins]] tables")
        origins_raw = []
    for index, item in enumerate(origins_raw):
        origin = _build_origin(item, f"origins[{index}]", problems)
        if origin is not None:
            origins.append(origin)
            positions.append(index)
    settings = Settings(**sections, origins=tuple(origins), source=source)
    # Every value left in `settings` has the right type (mistyped ones kept their default),
    # so range checks can run now and report their problems together with the type errors.
    _validate(settings, problems, positions)
    return settings


def _build_origin(item: Any, where: str, problems: list[str]) -> OriginSettings | None:
    if not isinstance(item, Mapping):
        problems.append(f"{where}: expected a table")
        return None
    kind = item.get("type")
    name = item.get("name")
    label = f"{where} ({name})" if isinstance(name, str) else where
    if kind not in ORIGIN_TYPES:
        problems.append(f"{label}.type: expected one of {', '.join(ORIGIN_TYPES)}, got {kind!r}")
        return None
    required, optional = ORIGIN_KEYS[kind]
    allowed = {"name", "type", "id_pattern", "extensions", *required, *optional}
    for key in item:
        if key not in allowed:
            problems.append(f"{label}.{key}: unknown key for a {kind} origin")
    usable = True  # a required key missing or mistyped: report the other keys too, then drop it
    for key in ("name", *required):
        if key not in item:
            problems.append(f"{label}.{key}: required for a {kind} origin")
            usable = False
        elif not isinstance(item[key], str):
            problems.append(f"{label}.{key}: expected a string, got {item[key]!r}")
            usable = False
    fixed = ("name", "type", *required)
    rest = {key: value for key, value in item.items() if key in allowed and key not in fixed}
    origin: OriginSettings = _build_section(
        OriginSettings, {"name": "", "type": kind, **rest}, label, problems
    )
    if not usable:
        return None
    return dataclasses.replace(origin, **{key: item[key] for key in fixed})


def _validate(s: Settings, problems: list[str], positions: list[int] | None = None) -> None:
    """Range and consistency checks, after every type is known to be right."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(1 <= s.server.port <= 65535, f"server.port: must be 1..65535, got {s.server.port}")
    url = urlsplit(s.server.public_url)
    need(
        not s.server.public_url or (url.scheme in ("http", "https") and bool(url.netloc)),
        f"server.public_url: must be an http(s) URL, got {s.server.public_url!r}",
    )
    need(s.server.max_connections >= 1, "server.max_connections: must be at least 1")
    need(s.server.header_timeout > 0, "server.header_timeout: must be positive")
    need(s.server.keepalive_timeout > 0, "server.keepalive_timeout: must be positive")
    need(s.storage.cache_max_bytes > 0, "storage.cache_max_bytes: must be positive")
    need(bool(s.storage.dir), "storage.dir: must not be empty")
    p = s.processing
    need(
        p.mode in ("on-demand", "eager"), f"processing.mode: 'on-demand' or 'eager', got {p.mode!r}"
    )
    need(1 <= p.workers <= 64, f"processing.workers: must be 1..64, got {p.workers}")
    need(
        bool(p.widths) and all(1 <= w <= 16384 for w in p.widths),
        "processing.widths: a non-empty list of widths in 1..16384",
    )
    need(len(set(p.widths)) == len(p.widths), "processing.widths: duplicate widths")
    for fmt in p.formats:
        need(
            fmt in FORMATS, f"processing.formats: unknown format {fmt!r} (use {', '.join(FORMATS)})"
        )
    need(bool(p.formats), "processing.formats: must list at least one format")
    need(8 <= p.placeholder_width <= 256, "processing.placeholder_width: must be 8..256")
    need(16 <= p.tile_size <= 4096, f"processing.tile_size: must be 16..4096, got {p.tile_size}")
    need(
        0 <= p.tile_overlap <= p.tile_size // 2,
        f"processing.tile_overlap: must be 0..tile_size/2, got {p.tile_overlap}",
    )
    need(
        p.tile_format in TILE_FORMATS,
        f"processing.tile_format: one of {', '.join(TILE_FORMATS)}, got {p.tile_format!r}",
    )
    need(1 <= p.quality <= 100, f"processing.quality: must be 1..100, got {p.quality}")
    need(p.job_timeout > 0, "processing.job_timeout: must be positive")
    need(p.max_queue >= 1, "processing.max_queue: must be at least 1")
    v = s.viewer
    need(0 <= v.first_view_wait <= 300, "viewer.first_view_wait: must be 0..300 seconds")
    need(v.default_width >= 1, "viewer.default_width: must be positive")
    need(v.max_age >= 0, "viewer.max_age: must not be negative")
    need(v.memory_cache_bytes >= 0, "viewer.memory_cache_bytes: must not be negative")
    need(s.hooks.on_demand_max_bytes >= 0, "hooks.on_demand_max_bytes: must not be negative")
    need(s.hooks.on_demand_max_side >= 0, "hooks.on_demand_max_side: must not be negative")
    lim = s.limits
    need(lim.max_source_bytes > 0, "limits.max_source_bytes: must be positive")
    need(lim.max_pixels > 0, "limits.max_pixels: must be positive")
    need(lim.connect_timeout > 0, "limits.connect_timeout: must be positive")
    need(lim.read_timeout > 0, "limits.read_timeout: must be positive")
    need(lim.fetch_timeout > 0, "limits.fetch_timeout: must be positive")
    need(lim.auth_failures >= 1, "limits.auth_failures: must be at least 1")
    need(lim.auth_window > 0, "limits.auth_window: must be positive")
    need(
        0 < lim.max_upload_bytes <= 1_000_000_000,
        "limits.max_upload_bytes: must be 1..1_000_000_000",
    )
    need(0 <= lim.fetch_retries <= 10, "limits.fetch_retries: must be 0..10")
    names: set[str] = set()
    for index, o in zip(positions or range(len(s.origins)), s.origins, strict=True):
        where = f"origins[{index}] ({o.name})"
        need(bool(o.name), f"{where}.name: must not be empty")
        need(o.name not in names, f"{where}.name: duplicate origin name {o.name!r}")
        names.add(o.name)
        if o.id_pattern is not None:
            try:
                re.compile(o.id_pattern)
            except re.error as exc:
                problems.append(f"{where}.id_pattern: not a valid regular expression: {exc}")
        for ext in o.extensions:
            need(
                ext.startswith(".") and "/" not in ext,
                f"{where}.extensions: {ext!r} must start with '.' and hold no '/'",
            )
        template = getattr(o, TEMPLATE_KEYS[o.type])
        need("{id}" in template, f"{where}.{TEMPLATE_KEYS[o.type]}: must contain {{id}}")
        if o.type in ("http", "rest"):
            need(
                urlsplit(o.url).scheme in ("http", "https"),
                f"{where}.url: must be an http(s) URL template",
            )
        if o.type == "rest":
            need(
                o.pointer == "" or o.pointer.startswith("/"),
                f"{where}.pointer: an RFC 6901 pointer starts with '/'",
            )
        if o.type == "ftp":
            need(1 <= o.port <= 65535, f"{where}.port: must be 1..65535")
