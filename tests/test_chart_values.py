"""charts/crm values: the schema accepts every shipped value set, rejects typos, and README documents
every value. Pure pytest (jsonschema, PyYAML); `make chart-check` renders and checks the manifests."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "crm"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def merged(*overlays: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with overlays deep-merged, as Helm does."""

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    result = copy.deepcopy(VALUES)
    for overlay in overlays:
        merge(result, copy.deepcopy(overlay))
    return result


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if path == "components":
            yield "components.<name>"
        elif isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path


def test_ci_value_sets_are_the_documented_ones():
    assert VALUE_SETS == ["netpol-values.yaml", "no-ingress-values.yaml", "production-values.yaml"]


@pytest.mark.parametrize("name", ["values.yaml", *VALUE_SETS])
def test_schema_accepts_the_shipped_values(name):
    overlay = {} if name == "values.yaml" else yaml.safe_load((CHART / "ci" / name).read_text())
    jsonschema.validate(merged(overlay), SCHEMA)


@pytest.mark.parametrize(
    "typo",
    [
        {"components": {"custmer": {}}},
        {"ingres": {"enabled": False}},
        {"defaults": {"autoscaling": {"minReplica": 2}}},
        {"networkPolicies": {"enable": True}},
        {"config": {"logFormat": "xml"}},
        {"defaults": {"topologySpread": {"zone": "Sometimes"}}},
    ],
)
def test_schema_rejects_typos(typo):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged(typo), SCHEMA)


def test_production_values_are_highly_available():
    prod = merged(yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text()))
    assert prod["evaluation"]["enabled"] is False
    assert prod["nats"]["streamReplicas"] == 3
    assert prod["networkPolicies"]["enabled"] and prod["ingress"]["enabled"]
    assert prod["externalDatabase"]["existingSecret"] and prod["externalNats"]["existingSecret"]
    for name, component in prod["components"].items():
        minimum = component.get("autoscaling", {}).get("minReplicas", prod["defaults"]["autoscaling"]["minReplicas"])
        assert minimum >= (3 if name == "gateway" else 2), name


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"`([A-Za-z][\w.<>]*)`", readme))
    missing = []
    for path in leaves(VALUES):
        parts = path.split(".")
        # The value itself, or an ancestor at least two levels deep (e.g. `defaults.resources`).
        candidates = {".".join(parts[:i]) for i in range(min(2, len(parts)), len(parts) + 1)}
        if not candidates & documented:
            missing.append(path)
    assert not missing, f"charts/crm/README.md does not document {missing}"
