"""The configs' JSON Schema (cnngrad/schemas/config.schema.json, `cnngrad schema`) kept in
sync with the validator (config.validate):

- every shipped config, every config under tests/ and the README's schema example conform;
- over systematic mutations of the shipped configs (each value replaced by values of other
  types and ranges, each key removed, an unknown key added), the schema never refuses what
  the validator accepts, and refuses whatever the validator refuses except where a schema
  cannot say it: shapes that must fit, sizes, and rules across fields (listed below).
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cnngrad import config as cfg
from cnngrad.cli import main

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "cnngrad" / "schemas" / "config.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# what a JSON Schema cannot express: the validator's messages for these rules
SHAPE_RULES = ("does not fit", "needs an input of shape", "needs a flat input", "shrinks to nothing", "too large",
               "softmax_cross_entropy needs", "network too large",
               "needs every path's output shape equal", "needs the other axes equal")  # a block's merge
BAD_VALUES: list[Any] = [None, -1, 0, 1, 3, 2.5, "zzz", "all", True, [], {}, [1], [2, 2], [1, 2, 3], {"zzz": 1}]


def schema_errors(raw: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(raw)]


def validator_error(raw: Any) -> str:
    try:
        cfg.validate(copy.deepcopy(raw))
    except cfg.ConfigError as e:
        return str(e)
    return ""


def test_the_schema_is_a_valid_schema_and_the_command_prints_it() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == SCHEMA
    report = CliRunner().invoke(main, ["schema", "--of", "report"])
    assert json.loads(report.stdout)["title"] == "cnngrad check report"


def configs_in_repo() -> list[tuple[str, Any]]:
    found = [(f"shipped {n}", cfg.parse_yaml(r.read_text(encoding="utf-8"))) for n, r in cfg.shipped_configs().items()]
    for path in sorted((ROOT / "tests").rglob("*.yaml")):
        raw = cfg.parse_yaml(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and "layers" in raw:
            found.append((str(path.relative_to(ROOT)), raw))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", readme, re.S):
        if block.startswith("name:"):  # the schema example
            found.append(("README", cfg.parse_yaml(block)))
    return found


@pytest.mark.parametrize("where, raw", configs_in_repo(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_config_in_the_repository_conforms(where: str, raw: Any) -> None:
    assert schema_errors(raw) == [], where


def mutations(raw: Any, path: tuple = ()) -> Iterator[tuple[str, Any]]:
    """(what was changed, the mutated config) for every node of ``raw``."""
    def at(path: tuple, change: Any) -> Any:
        out = copy.deepcopy(raw)
        node = out
        for step in path[:-1]:
            node = node[step]
        change(node, path[-1])
        return out

    def walk(node: Any, path: tuple) -> Iterator[tuple[str, Any]]:
        if path:
            for value in BAD_VALUES:
                def put(parent: Any, key: Any, value: Any = value) -> None:
                    parent[key] = copy.deepcopy(value)
                yield f"{path} = {value!r}", at(path, put)
            if not isinstance(path[-1], int):
                yield f"del {path}", at(path, lambda parent, key: parent.pop(key))
        if isinstance(node, dict):
            yield f"{path} + zzz", at(path + ("zzz",), lambda parent, key: parent.__setitem__(key, 1)) \
                if path else ("+ zzz", {**copy.deepcopy(raw), "zzz": 1})
            for key, value in node.items():
                yield from walk(value, path + (key,))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, path + (i,))

    yield from walk(raw, path)


@pytest.mark.parametrize("name", list(cfg.shipped_configs()))
def test_schema_and_validator_agree_on_mutations(name: str) -> None:
    base = cfg.parse_yaml(cfg.shipped_configs()[name].read_text(encoding="utf-8"))
    refused_by_both = 0
    for what, raw in mutations(base):
        validator, schema = validator_error(raw), schema_errors(raw)
        if not validator:
            assert not schema, f"{name}: {what}: the validator accepts it, the schema says {schema[0]}"
        elif not any(rule in validator for rule in SHAPE_RULES):
            assert schema, f"{name}: {what}: the validator says {validator!r}, the schema accepts it"
            refused_by_both += 1
    assert refused_by_both > 100  # the mutations do reach the rules


def test_the_schema_knows_every_method_and_the_documented_ridders_config():
    """A QA pass: `check: {method: ridders, tol: estimate}` (the README's own example) was refused
    by the schema — its enum had four of the five methods."""
    check = SCHEMA["properties"]["check"]["oneOf"][1]["properties"]
    assert tuple(check["method"]["enum"]) == cfg.FD_METHODS
    raw = {"input": {"batch": 1, "channels": 1, "height": 4, "width": 4}, "layers": [{"flatten": {}}],
           "loss": "mse", "check": {"method": "ridders", "tol": "estimate"}}
    jsonschema.validate(raw, SCHEMA)
    cfg.validate(raw)
