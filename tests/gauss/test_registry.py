"""Plugin lookup by short name or ``module:Class``, and the typed option structs (``PluginConfig``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest

from gauss.errors import ConfigError, UnknownPluginError
from gauss.registry import KINDS, PluginConfig, convert, create, known, lookup


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPluginError) as info:
        create("framing", {"type": "line"}, where="sources[0].framing")
    message = str(info.value)
    assert message.startswith("sources[0].framing.type: unknown framing 'line'; known: ")
    assert "lines" in message and "length-prefixed" in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, LookupError)


def test_known_lists_installed_built_ins() -> None:
    assert {"lines", "length-prefixed"} <= set(known("framing"))
    assert "json" in known("codec")
    assert known("codec") == sorted(known("codec"))


def test_missing_type_and_non_table_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^x\.type: missing; known framing types: .*lines"):
        create("framing", {}, where="x")
    with pytest.raises(ConfigError, match="must be a framing type name or a table with a 'type', got 3"):
        create("framing", 3, where="x")  # type: ignore[arg-type]


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown plugin kind 'codecs'; known: transport"):
        known("codecs")
    assert set(KINDS) == {"transport", "framing", "middleware", "codec", "storage", "processor", "sink"}


def test_short_name_creates_the_plugin_with_options() -> None:
    framing = create("framing", {"type": "lines", "max_frame_bytes": 128})
    assert framing.name == "lines" and framing.max_frame_bytes == 128
    assert create("framing", "length-prefixed").name == "length-prefixed"


def test_module_class_names_any_importable_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"gauss_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from gauss.registry import PluginConfig

            class UpperConfig(PluginConfig):
                prefix: str = "> "

            class Upper:
                Config = UpperConfig

                def __init__(self, prefix):
                    self.prefix = prefix

                @classmethod
                def from_config(cls, config):
                    return cls(config.prefix)

                def decode(self, payloads, max_bytes, budget=None):
                    return list(payloads), []

                def encode(self, payloads):
                    return [self.prefix.encode() + p for p in payloads]

            class Half(Upper):
                Config = UpperConfig
                decode = None

            def create(table):
                return Upper(table.get("prefix", ""))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    made = create("middleware", {"type": f"{module}:Upper", "prefix": "# "})
    assert made.prefix == "# "
    assert lookup("middleware", f"{module}:Upper").__name__ == "Upper"
    with pytest.raises(ConfigError, match=rf"^type: middleware '{module}:Half' .* does not implement Middleware: missing decode$"):
        create("middleware", f"{module}:Half")
    with pytest.raises(UnknownPluginError, match=rf"middleware '{module}:create' .* is not a plugin: it needs a Config"):
        create("middleware", f"{module}:create")
    with pytest.raises(UnknownPluginError, match=rf"cannot load middleware '{module}:missing'"):
        create("middleware", f"{module}:missing")
    with pytest.raises(UnknownPluginError, match="cannot load"):
        create("middleware", "no_such_module_anywhere:Upper")


def test_unknown_option_names_key_path_and_known_options() -> None:
    with pytest.raises(ConfigError) as info:
        create("framing", {"type": "lines", "max_frame_byte": 10}, where="sources[0].framing")
    assert str(info.value) == "sources[0].framing.max_frame_byte: unknown option; known: max_frame_bytes"


def test_option_type_and_range_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^f\.max_frame_bytes: Expected int \| null, got str$"):
        create("framing", {"type": "lines", "max_frame_bytes": "10"}, where="f")
    with pytest.raises(ConfigError, match=r"^f\.max_frame_bytes: Expected int >= 1, got 0$"):
        create("framing", {"type": "lines", "max_frame_bytes": 0}, where="f")


class Example(PluginConfig):
    name: str
    mode: Literal["fast", "slow"] = "fast"
    ratio: Annotated[float, msgspec.Meta(le=3.0)] = 1.0
    flag: bool = False
    names: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] = ()
    dir: Path = Path("data")
    limit: Annotated[int, msgspec.Meta(ge=1)] = 5

    def __post_init__(self) -> None:
        if self.mode == "slow" and self.flag:
            raise ConfigError("flag", "a slow example cannot be flagged")


def test_a_config_struct_reads_its_table(tmp_path: Path) -> None:
    config = convert({"name": "x", "mode": "fast", "ratio": 2, "flag": True, "names": ["a", "b"], "dir": "d"}, Example, base_dir=tmp_path)
    assert config == Example(name="x", mode="fast", ratio=2.0, flag=True, names=("a", "b"), dir=tmp_path / "d")
    assert convert({"name": "x", "dir": "/abs"}, Example, base_dir=tmp_path).dir == Path("/abs")
    assert convert({"name": "x"}, Example).dir == Path("data")  # no base: as written

    cases = [
        ({"name": "x", "mode": "medium"}, "mode: unknown value 'medium'; known: fast, slow"),
        ({"name": "x", "ratio": float("nan")}, "ratio: Expected float <= 3.0, got nan"),
        ({"name": "x", "dir": "d", "ratio": float("-inf")}, "ratio: must be a finite number, got -inf"),
        ({"name": "x", "ratio": 4}, "ratio: Expected float <= 3.0, got 4"),
        ({"name": "x", "flag": 1}, "flag: Expected bool, got int"),
        ({"name": "x", "limit": True}, "limit: Expected int, got bool"),
        ({"name": "x", "names": ["a", ""]}, "names[1]: Expected str of length >= 1, got ''"),
        ({"name": "x", "dir": ""}, "dir: Expected a path (a non-empty string), got ''"),
        ({"name": "x", "mode": "slow", "flag": True}, "flag: a slow example cannot be flagged"),
        ({}, "name: missing (required)"),
        ({"name": "x", "nmae": 1}, "nmae: unknown option; known: name, mode, ratio, flag, names, dir, limit"),
    ]
    for table, message in cases:
        with pytest.raises(ConfigError) as info:
            convert(table, Example)
        assert str(info.value) == message


OOT_PLUGIN = '''
"""A third-party codec: JSON with every string value reversed."""

import json

from gauss.core import TopicRecord
from gauss.registry import PluginConfig


class ReversedJsonConfig(PluginConfig):
    key_field: str = "symbol"


class ReversedJson:
    name = "{name}"
    text = True
    Config = ReversedJsonConfig

    @classmethod
    def from_config(cls, config):
        return cls(config.key_field)

    def __init__(self, key_field):
        self.key_field = key_field

    def decode(self, payloads):
        records = []
        for payload in payloads:
            data = {{k: v[::-1] if isinstance(v, str) else v for k, v in json.loads(payload).items()}}
            records.append(TopicRecord(data["ts_ms"], data[self.key_field], data))
        return records, []

    def encode(self, records):
        return [json.dumps({{k: v[::-1] if isinstance(v, str) else v for k, v in r.data.items()}}).encode() for r in records]
'''

CHECK = '''
import sys
from gauss.registry import create, known

name = sys.argv[1]
assert name in known("codec"), known("codec")
codec = create("codec", {"type": name, "key_field": "symbol"})
records, rejected = codec.decode([b'{"symbol": "DSURUE", "ts_ms": 5}'])
assert rejected == [] and records[0].key == "EURUSD", records
assert codec.encode(records) == [b'{"symbol": "DSURUE", "ts_ms": 5}']
try:
    create("codec", {"type": name, "bogus": 1})
except Exception as exc:
    print("refused:", exc)
print("ok", type(codec).__module__)
'''


def test_out_of_tree_plugin_distribution_is_used_by_name(tmp_path: Path) -> None:
    """Build and pip-install a tiny distribution declaring a ``gauss.codecs`` entry point.

    NOTE: it is installed with ``--target`` into a private directory and used
    from a fresh interpreter with that directory on ``PYTHONPATH``: the
    shared virtualenv is never modified (other test runs may be reading its
    entry points at the same time), and nothing is left behind if the test
    is interrupted. importlib.metadata finds the distribution exactly as it
    finds one installed in site-packages.
    """
    suffix = uuid.uuid4().hex[:8]
    package = f"gauss_oot_{suffix}"
    name = f"reversed-json-{suffix}"
    source = tmp_path / "src"
    (source / package).mkdir(parents=True)
    (source / package / "__init__.py").write_text(OOT_PLUGIN.format(name=name))
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{package}"
            version = "0.0.1"

            [project.entry-points."gauss.codecs"]
            "{name}" = "{package}:ReversedJson"

            [tool.setuptools]
            packages = ["{package}"]
            """
        )
    )
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", "--disable-pip-version-check", "--target", str(target), str(source),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr
    assert list(target.glob(f"{package}-0.0.1.dist-info/entry_points.txt"))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    check = subprocess.run(
        [sys.executable, "-c", CHECK, name], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert check.returncode == 0, check.stderr
    assert "refused: bogus: unknown option; known: key_field" in check.stdout
    assert check.stdout.strip().endswith(f"ok {package}")

    # Without the distribution on the path the name is unknown again.
    assert name not in known("codec")
