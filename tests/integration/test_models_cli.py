"""``promptmill models list|show|check`` against the simulator (real HTTP through the SDK)."""

from __future__ import annotations

from pathlib import Path

import orjson

from promptmill.dev.harness import Env, sim_call
from promptmill.dev.processes import free_port


async def test_check_probes_every_deployment_and_fails_on_a_dead_one(
    env: Env, tmp_path: Path
) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        f"""\
groups:
  promptmill-sim:
    deployments:
      - name: sim
        base_url: {env.endpoints.sim_url}
        api_key_env: SIM_KEY
        rpm: 600
        headers: {{x-team: research}}
      - name: gone
        base_url: http://127.0.0.1:{free_port()}/v1
        timeout_seconds: 5
      - name: azure
        kind: azure
        base_url: {env.endpoints.sim_url.removesuffix("/v1")}
        azure_deployment: sim-eu
        api_version: "2024-10-21"
        api_key_env: SIM_KEY
"""
    )
    env.extra |= {"PROMPTMILL_MODEL_CATALOG": str(catalog), "SIM_KEY": "secret-sim-key"}

    listed = env.cli("models", "list").stdout
    assert "promptmill-sim" in listed and " sim " in listed and " gone " in listed

    shown = orjson.loads(env.cli("models", "show", "promptmill-sim").stdout)
    deployments = shown["promptmill-sim"]["deployments"]
    assert deployments[0]["key"] == "env SIM_KEY" and deployments[0]["rpm"] == 600
    assert "secret-sim-key" not in str(shown)

    checked = env.cli("models", "check", check=False)
    assert checked.returncode != 0
    rows = {line.split()[1]: line for line in checked.stdout.splitlines()}
    assert " ok " in rows["sim"] and "HTTP 200" in rows["sim"], checked.stdout
    assert " FAILED " in rows["gone"] and "Connection" in rows["gone"], checked.stdout
    # through the SDK's Azure client: /openai/deployments/sim-eu/chat/completions, api-key
    assert " ok " in rows["azure"] and "HTTP 200" in rows["azure"], checked.stdout
    assert (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["azure"] == 1
    assert "1 of 3 deployment(s) failed the check" in checked.stderr

    missing = env.cli("models", "show", "nope", check=False)
    assert missing.returncode != 0 and "no model group 'nope'" in missing.stderr


def test_without_a_catalog_the_endpoint_is_the_one_deployment(env: Env) -> None:
    listed = env.cli("models", "list").stdout
    assert env.endpoints.sim_url in listed
    assert env.cli("models", "check").returncode == 0


def test_a_catalog_with_a_key_inline_is_refused(env: Env, tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        "groups:\n  m:\n    deployments:\n      - name: a\n"
        "        base_url: http://x/v1\n        api_key: sk-inline\n"
    )
    env.extra["PROMPTMILL_MODEL_CATALOG"] = str(catalog)
    refused = env.cli("models", "list", check=False)
    assert refused.returncode != 0
    assert f"{catalog}:4: field groups.m.deployments.0: an API key may not be written" in (
        refused.stderr
    )
    assert "sk-inline" not in refused.stderr
