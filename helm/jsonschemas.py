"""Offline JSON schemas for kubeconform, from sources pinned as Go modules.

kubeconform validates each rendered manifest against a JSON schema found by its kind and
apiVersion. Its usual schema site is not reachable from CI, so this script builds the
same kind of schemas from what the Go module proxy serves:

- Kubernetes: the OpenAPI v3 documents of ``k8s.io/kubernetes`` (``api/openapi-spec/v3``),
  one schema file per kind with the definitions it needs under ``$defs``;
- custom resources (KEDA, prometheus-operator): the ``openAPIV3Schema`` of each CRD.

Every object schema that lists its properties is closed (``additionalProperties: false``,
as ``kubeconform -strict`` expects) unless it preserves unknown fields, so a misspelt
field fails. Files are laid out as ``<group>/<kind>_<version>.json`` (``v1/`` for the core
group), i.e. the kubeconform schema location
``<dir>/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json``.

It also records the parameters of KEDA's kafka scaler (its ``keda:"name=..."`` struct
tags) in ``keda-kafka-parameters.json``, because a ScaledObject's trigger metadata is a
free-form map that no schema checks.

Usage: jsonschemas.py OUT_DIR --kubernetes K8S_MODULE_DIR --crd FILE... --keda-kafka-scaler FILE
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]
COMPONENTS = "#/components/schemas/"
SPEC_FILE = re.compile(r"^(?:api__(v1)|apis__(.+)__(v[0-9a-z]+))_openapi\.json$")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else")


def close_objects(schema: Any) -> None:
    """Forbid properties a schema does not list, the way the API server prunes them."""
    if not isinstance(schema, dict):
        return
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    for key in SUBSCHEMA_MAPS:
        for sub in (schema.get(key) or {}).values():
            close_objects(sub)
    for key in SUBSCHEMA_LISTS:
        for sub in schema.get(key) or []:
            close_objects(sub)
    for key in SUBSCHEMAS:
        close_objects(schema.get(key))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENTS):
            yield ref.removeprefix(COMPONENTS)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                "#/$defs/" + v.removeprefix(COMPONENTS)
                if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def standalone(name: str, components: dict[str, Schema]) -> Schema:
    """The schema of component ``name`` with every definition it reaches under ``$defs``."""
    needed: dict[str, Schema] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in needed:
            continue
        needed[current] = components[current]
        todo.extend(_refs(components[current]))
    root: Schema = _rewrite_refs(components[name])
    root["$defs"] = {k: _rewrite_refs(v) for k, v in needed.items() if k != name}
    close_objects(root)
    return root


def kubernetes_schemas(module_dir: Path) -> Iterator[tuple[str, str, str, Schema]]:
    """(group dir, kind, version, schema) of every kind in the Kubernetes OpenAPI v3 spec."""
    spec_dir = module_dir / "api" / "openapi-spec" / "v3"
    for path in sorted(spec_dir.glob("*_openapi.json")):
        match = SPEC_FILE.match(path.name)
        if match is None:
            continue
        group = "" if match.group(1) else match.group(2)
        version = match.group(1) or match.group(3)
        components: dict[str, Schema] = json.loads(path.read_text())["components"]["schemas"]
        for name, schema in components.items():
            if name.startswith("io.k8s.apimachinery."):
                continue  # DeleteOptions, Status, WatchEvent: listed under every group
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                if gvk["group"] == group and gvk["version"] == version:
                    yield group or version, gvk["kind"], version, standalone(name, components)


def crd_schemas(paths: Iterable[Path]) -> Iterator[tuple[str, str, str, Schema]]:
    """(group, kind, version, schema) of every version of every CRD in the files."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is not None:
                    close_objects(schema)
                    yield spec["group"], spec["names"]["kind"], version["name"], schema


def keda_parameters(scaler_source: Path) -> dict[str, dict[str, list[str]]]:
    """Parameter names of a KEDA scaler, from its ``keda:"name=...,order=..."`` tags."""
    parameters: dict[str, dict[str, list[str]]] = {}
    for tag in re.findall(r'`[^`]*keda:"([^"]+)"[^`]*`', scaler_source.read_text()):
        options = dict(part.strip().partition("=")[::2] for part in tag.split(","))
        for name in options.get("name", "").split(";"):
            if name:
                parameters[name] = {
                    "order": [o for o in options.get("order", "").split(";") if o],
                    "enum": [e for e in options.get("enum", "").split(";") if e],
                }
    return parameters


def write(out: Path, group: str, kind: str, version: str, schema: Schema) -> None:
    target = out / group / f"{kind.lower()}_{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(schema, separators=(",", ":")))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kubernetes", type=Path, required=True)
    parser.add_argument("--crd", type=Path, action="append", default=[])
    parser.add_argument("--keda-kafka-scaler", type=Path, required=True)
    args = parser.parse_args(argv)
    count = 0
    for entry in (*kubernetes_schemas(args.kubernetes), *crd_schemas(args.crd)):
        write(args.out, *entry)
        count += 1
    if count == 0:
        print(f"no schemas found under {args.kubernetes}", file=sys.stderr)
        return 1
    params = keda_parameters(args.keda_kafka_scaler)
    if "offsetResetPolicy" not in params:
        print(f"no kafka scaler parameters in {args.keda_kafka_scaler}", file=sys.stderr)
        return 1
    (args.out / "keda-kafka-parameters.json").write_text(json.dumps(params, indent=1))
    print(f"{count} schemas and {len(params)} kafka scaler parameters in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
