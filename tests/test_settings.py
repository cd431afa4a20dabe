"""Settings: SPEC §10 defaults, TOML and IMGPROXY_* overrides, every problem reported with its key."""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from imgproxy import settings as settings_module
from imgproxy.settings import (
    ORIGIN_KEYS,
    ORIGIN_TYPES,
    SECTIONS,
    ConfigError,
    OriginSettings,
    Settings,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

# The keys SPEC §10 lists, with the values it gives them.
SPEC_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {"host": "127.0.0.1", "port": 8080, "cors_origins": ("*",)},
    "storage": {"dir": "./var", "cache_max_bytes": 20_000_000_000},
    "processing": {
        "mode": "on-demand",
        "workers": 2,
        "widths": (320, 640, 960, 1280, 1920, 2560),
        "formats": ("webp", "jpg"),
        "placeholder_width": 32,
        "tile_size": 254,
        "tile_overlap": 1,
        "tile_format": "jpg",
    },
    "viewer": {"first_view_wait": 10.0},
    "hooks": {"on_demand_max_bytes": 3_000_000, "on_demand_max_side": 5000},
    "limits": {
        "max_source_bytes": 1_073_741_824,
        "max_pixels": 1_000_000_000,
        "allow_private_networks": False,
        "allowed_hosts": (),
        "connect_timeout": 5.0,  # SPEC §9
        "read_timeout": 30.0,  # SPEC §9
    },
}

FILE_ORIGIN = '[[origins]]\nname = "local"\ntype = "file"\nroot = "./originals"\n'


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    """Write `text` to a config file and load it with only the given environment."""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env=env or {})


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems a config file is rejected with (failing when it loads)."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, env)
    return caught.value.problems


def test_defaults_match_spec() -> None:
    """With no file and no environment every key SPEC §10 lists has the SPEC's value."""
    settings = load_settings(env={})
    for section, values in SPEC_DEFAULTS.items():
        for key, expected in values.items():
            assert getattr(getattr(settings, section), key) == expected, f"{section}.{key}"
    assert settings.public_base() == "http://127.0.0.1:8080"
    assert settings.origins == ()
    assert settings.source == "<defaults>"


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    """Keys set in the TOML file replace the defaults; the keys it leaves out keep them."""
    settings = load_text(
        tmp_path,
        '[server]\nport = 9000\npublic_url = "https://img.example.com"\n'
        '[processing]\nwidths = [100, 200]\nformats = ["avif"]\njob_timeout = 60\n'
        '[limits]\nallowed_hosts = ["10.0.0.0/8"]\n'
        + FILE_ORIGIN
        + 'id_pattern = "^IMG_[0-9]+$"\nextensions = [".jpg"]\n',
    )
    assert settings.server.port == 9000
    assert settings.server.host == "127.0.0.1"
    assert settings.public_base() == "https://img.example.com"
    assert settings.processing.widths == (100, 200)
    assert settings.processing.formats == ("avif",)
    assert settings.processing.job_timeout == 60.0
    assert isinstance(settings.processing.job_timeout, float)
    assert settings.processing.tile_size == 254
    assert settings.limits.allowed_hosts == ("10.0.0.0/8",)
    (origin,) = settings.origins
    assert (origin.name, origin.type, origin.root, origin.path) == (
        "local",
        "file",
        "./originals",
        "{id}",
    )
    assert origin.extensions == (".jpg",)
    regex = origin.id_regex()
    assert regex is not None and regex.fullmatch("IMG_42")


@pytest.mark.parametrize(
    ("variable", "value", "section", "key", "expected"),
    [
        ("IMGPROXY_SERVER__PORT", "9001", "server", "port", 9001),
        ("IMGPROXY_STORAGE__CACHE_MAX_BYTES", "5_000_000", "storage", "cache_max_bytes", 5000000),
        ("IMGPROXY_VIEWER__FIRST_VIEW_WAIT", "2.5", "viewer", "first_view_wait", 2.5),
        ("IMGPROXY_LIMITS__CONNECT_TIMEOUT", "3", "limits", "connect_timeout", 3.0),
        (
            "IMGPROXY_LIMITS__ALLOW_PRIVATE_NETWORKS",
            "true",
            "limits",
            "allow_private_networks",
            True,
        ),
        ("IMGPROXY_LIMITS__ALLOW_PRIVATE_NETWORKS", "0", "limits", "allow_private_networks", False),
        ("IMGPROXY_PROCESSING__WIDTHS", "320, 640", "processing", "widths", (320, 640)),
        ("IMGPROXY_PROCESSING__WIDTHS", "[100, 200]", "processing", "widths", (100, 200)),
        ("IMGPROXY_PROCESSING__FORMATS", "avif,jpg", "processing", "formats", ("avif", "jpg")),
        ("IMGPROXY_PROCESSING__FORMATS", '["png"]', "processing", "formats", ("png",)),
        (
            "IMGPROXY_SERVER__CORS_ORIGINS",
            "https://a.example,https://b.example",
            "server",
            "cors_origins",
            ("https://a.example", "https://b.example"),
        ),
        ("IMGPROXY_LIMITS__ALLOWED_HOSTS", "", "limits", "allowed_hosts", ()),
    ],
)
def test_env_overrides_convert_to_the_key_type(
    variable: str, value: str, section: str, key: str, expected: Any
) -> None:
    """IMGPROXY_SECTION__KEY sets section.key, converted to its type (int, float, bool, list)."""
    settings = load_settings(env={variable: value})
    got = getattr(getattr(settings, section), key)
    assert got == expected
    assert type(got) is type(expected)


def test_env_overrides_beat_the_file_and_reach_origins(tmp_path: Path) -> None:
    """Environment variables win over the file; IMGPROXY_ORIGINS__0__ROOT sets origins[0].root."""
    settings = load_text(
        tmp_path,
        "[server]\nport = 9000\n" + FILE_ORIGIN,
        env={
            "IMGPROXY_SERVER__PORT": "9100",
            "IMGPROXY_ORIGINS__0__ROOT": "/srv/photos",
            "IMGPROXY_ORIGINS__0__EXTENSIONS": ".jpg,.tif",
            "UNRELATED": "x",
        },
    )
    assert settings.server.port == 9100
    assert settings.origins[0].root == "/srv/photos"
    assert settings.origins[0].extensions == (".jpg", ".tif")


def test_env_origin_headers_take_a_json_table(tmp_path: Path) -> None:
    """A table-valued origin key (headers) is set from a JSON object."""
    settings = load_text(
        tmp_path,
        '[[origins]]\nname = "web"\ntype = "http"\nurl = "https://example.com/{id}"\n',
        env={"IMGPROXY_ORIGINS__0__HEADERS": '{"Authorization": "Bearer t"}'},
    )
    assert dict(settings.origins[0].headers) == {"Authorization": "Bearer t"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"IMGPROXY_SERVER__PORT": "eighty"}, "server.port: expected an integer, got 'eighty'"),
        ({"IMGPROXY_LIMITS__ALLOW_PRIVATE_NETWORKS": "maybe"}, "limits.allow_private_networks"),
        ({"IMGPROXY_PROCESSING__WIDTHS": "320,wide"}, "processing.widths[1]"),
        ({"IMGPROXY_PROCESSING__WIDTHS": "[320,"}, "processing.widths: expected a list"),
        ({"IMGPROXY_NOPE__KEY": "1"}, "IMGPROXY_NOPE__KEY: no such setting (nope.key)"),
        ({"IMGPROXY_SERVER__PROT": "1"}, "server.prot: unknown key"),
        ({"IMGPROXY_ORIGINS__0__ROOT": "/x"}, "IMGPROXY_ORIGINS__0__ROOT: there is no origin"),
    ],
)
def test_bad_env_values_are_reported_by_key(env: dict[str, str], expected: str) -> None:
    """An environment value that does not convert, or names no setting, is a problem naming it."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[nope]\nx = 1\n", "nope: unknown section"),
        ("colour = 1\n", "colour: unknown section"),
        ("server = 5\n", "[server]: expected a table"),
        ("[server]\nprot = 80\n", "server.prot: unknown key"),
        ('[server]\nport = "80"\n', "server.port: expected an integer, got '80'"),
        ("[server]\nport = 80.0\n", "server.port: expected an integer"),
        ("[limits]\nallow_private_networks = 1\n", "limits.allow_private_networks: expected true"),
        ('[processing]\nwidths = "320"\n', "processing.widths: expected a list"),
        ('[processing]\nwidths = [320, "640"]\n', "processing.widths[1]: expected an integer"),
        ("[server]\nport = 70000\n", "server.port: must be 1..65535, got 70000"),
        ("[processing]\nworkers = 0\n", "processing.workers: must be 1..64"),
        ("[processing]\nquality = 101\n", "processing.quality: must be 1..100"),
        ('[processing]\nformats = ["gif"]\n', "processing.formats: unknown format 'gif'"),
        ('[processing]\nmode = "lazy"\n', "processing.mode"),
        ('[processing]\ntile_format = "avif"\n', "processing.tile_format"),
        ("[processing]\ntile_overlap = 200\n", "processing.tile_overlap"),
        ("[processing]\nwidths = [320, 320]\n", "processing.widths: duplicate widths"),
        ('[server]\npublic_url = "ftp://x"\n', "server.public_url: must be an http(s) URL"),
        ("[limits]\nfetch_retries = 11\n", "limits.fetch_retries: must be 0..10"),
        (
            '[[origins]]\nname = "x"\ntype = "gopher"\n',
            "origins[0] (x).type: expected one of file, http, rest, s3, ftp, got 'gopher'",
        ),
        ('[[origins]]\nname = "x"\n', "origins[0] (x).type: expected one of"),
        ('[[origins]]\nname = "x"\ntype = "file"\n', "origins[0] (x).root: required"),
        ('[[origins]]\ntype = "file"\nroot = "."\n', "origins[0].name: required"),
        ('[[origins]]\nname = "x"\ntype = "s3"\n', "origins[0] (x).bucket: required"),
        (
            '[[origins]]\nname = "x"\ntype = "rest"\nurl = "http://a/{id}"\n',
            "(x).pointer: required",
        ),
        ('[[origins]]\nname = "x"\ntype = "file"\nroot = 5\n', "(x).root: expected a string"),
        (FILE_ORIGIN + 'url = "http://a/{id}"\n', "(local).url: unknown key for a file origin"),
        (FILE_ORIGIN + 'id_pattern = "IMG_(["\n', "(local).id_pattern: not a valid regular"),
        (FILE_ORIGIN + 'extensions = ["jpg"]\n', "(local).extensions: 'jpg' must start with '.'"),
        (FILE_ORIGIN + 'path = "photos/x.jpg"\n', "origins[0] (local).path: must contain {id}"),
        (
            '[[origins]]\nname = "w"\ntype = "http"\nurl = "https://a.example/x"\n',
            "origins[0] (w).url: must contain {id}",
        ),
        (
            '[[origins]]\nname = "w"\ntype = "http"\nurl = "file:///{id}"\n',
            "origins[0] (w).url: must be an http(s) URL",
        ),
        (
            '[[origins]]\nname = "f"\ntype = "ftp"\nhost = "h"\nport = 0\n',
            "origins[0] (f).port: must be 1..65535",
        ),
        (FILE_ORIGIN + FILE_ORIGIN, "origins[1] (local).name: duplicate origin name"),
        ('origins = "x"\n', "origins: expected [[origins]] tables"),
    ],
)
def test_each_problem_is_reported_with_its_location(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Unknown sections and keys, wrong types and bad values are refused, naming the key path."""
    problems = problems_of(tmp_path, text)
    path = str(tmp_path / "config.toml")
    assert all(problem.startswith(f"{path}: ") for problem in problems), problems
    assert any(expected in problem for problem in problems), problems


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Type errors, range errors and origin errors in one file all come back in one ConfigError."""
    text = """
[nope]
x = 1

[server]
prot = 80
port = 70000

[processing]
workers = "two"
quality = 0

[[origins]]
name = "a"
type = "gopher"

[[origins]]
name = "b"
type = "file"

[[origins]]
name = "c"
type = "file"
root = "."
id_pattern = "(["
extensions = ["jpg"]
path = "no-placeholder"
"""
    problems = problems_of(tmp_path, text, env={"IMGPROXY_VIEWER__MAX_AGE": "long"})
    expected = [
        "nope: unknown section",
        "server.prot: unknown key",
        "server.port: must be 1..65535",
        "processing.workers: expected an integer",
        "processing.quality: must be 1..100",
        "viewer.max_age: expected an integer",
        "origins[0] (a).type: expected one of",
        "origins[1] (b).root: required",
        "origins[2] (c).id_pattern: not a valid regular expression",
        "origins[2] (c).extensions: 'jpg' must start with '.'",
        "origins[2] (c).path: must contain {id}",
    ]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    assert len(problems) == len(expected), problems
    assert str(ConfigError(problems)) == "\n".join(problems)


def test_unreadable_or_invalid_toml_is_one_clear_problem(tmp_path: Path) -> None:
    """A missing file and a TOML syntax error are reported as such, naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "[server\nport = 1\n")


def test_settings_are_frozen() -> None:
    """Settings are immutable once loaded: code cannot change configuration behind a test's back."""
    settings = load_settings(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


# --- config.example.toml documents every key (in the style of datasette's tests/test_docs.py) ---

COMMENTED_KEY = re.compile(r"^# ([a-z_]+ = .*)$")
COMMENTED_HEADER = re.compile(r"^# (\[\[origins\]\])$")
KEY_LINE = re.compile(r"^(?:# )?([a-z_]+) = ")


def uncommented_example() -> str:
    """config.example.toml with its commented-out keys and [[origins]] examples switched on."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = COMMENTED_KEY.match(line) or COMMENTED_HEADER.match(line)
        lines.append(match.group(1) if match else line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    """The example's keys, commented-out examples included, as parsed TOML."""
    return tomllib.loads(uncommented_example())


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_section_key_is_documented(example: dict[str, Any], section: str) -> None:
    """Each field of each settings dataclass appears in config.example.toml, and nothing else does."""
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    documented = set(example.get(section, {}))
    assert fields - documented == set(), f"undocumented [{section}] keys"
    assert documented - fields == set(), f"[{section}] keys that do not exist"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_example_values_are_the_defaults(example: dict[str, Any], section: str) -> None:
    """The values config.example.toml shows for a section are the code's defaults."""
    defaults = SECTIONS[section]()
    for key, value in example[section].items():
        shown = tuple(value) if isinstance(value, list) else value
        assert shown == getattr(defaults, key), f"{section}.{key}"


@pytest.mark.parametrize("origin_type", ORIGIN_TYPES)
def test_every_origin_type_is_documented(example: dict[str, Any], origin_type: str) -> None:
    """Each origin type has an example showing every key ORIGIN_KEYS gives it, and no other."""
    blocks = [o for o in example["origins"] if o["type"] == origin_type]
    assert blocks, f"no [[origins]] example of type {origin_type}"
    required, optional = ORIGIN_KEYS[origin_type]
    common = {"name", "type", "id_pattern", "extensions"}
    for block in blocks:
        assert {"name", "type", *required, *optional} - set(block) == set(), origin_type
        assert set(block) - common - {*required, *optional} == set(), origin_type


def test_every_origin_field_is_documented(example: dict[str, Any]) -> None:
    """Each OriginSettings field appears in some [[origins]] example."""
    documented = {key for block in example["origins"] for key in block}
    assert {f.name for f in dataclasses.fields(OriginSettings)} - documented == set()


def test_every_documented_key_has_a_comment_with_its_default() -> None:
    """Each key is explained by a comment line right above it at least once, giving its default."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    explained: dict[str, str] = {}
    for above, line in itertools.pairwise(lines):
        match = KEY_LINE.match(line)
        prose = above.startswith("# ") and not KEY_LINE.match(above)
        if match and prose:
            explained.setdefault(match.group(1), above)
    keys = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    keys |= {f.name for f in dataclasses.fields(OriginSettings)}
    assert keys - set(explained) == set(), "keys without a comment"
    for key, comment in explained.items():
        assert "default" in comment or "required" in comment, (key, comment)


def test_example_loads_cleanly() -> None:
    """config.example.toml as shipped is a valid configuration with one file origin."""
    settings = load_settings(EXAMPLE, env={})
    assert [(o.name, o.type) for o in settings.origins] == [("local", "file")]


def test_example_with_every_example_switched_on_loads_cleanly(tmp_path: Path) -> None:
    """The commented-out origin examples are valid configuration too, one origin per type."""
    settings = load_text(tmp_path, uncommented_example())
    assert sorted(o.type for o in settings.origins) == sorted(ORIGIN_TYPES)


def test_settings_module_declares_every_section() -> None:
    """Settings has a field per section in SECTIONS (so the docs test sees every section)."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(SECTIONS) <= fields
    assert fields - set(SECTIONS) == {"origins", "source"}
    assert settings_module.ENV_PREFIX == "IMGPROXY_"
