"""deploy/: the Kubernetes manifests validate against Kubernetes' own schemas
(kubernetes-validate, strict: no unknown field), every KEYSTONE_* variable they
set is a flag of the command the container runs and parses into a valid
configuration, and the alert rules name metrics the processes export."""

from __future__ import annotations

import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from keystone_ingest.server.bronze.metrics import BronzeMetrics
from keystone_ingest.server.cli import build_parser
from keystone_ingest.server.config import config_from_args
from keystone_ingest.server.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def documents() -> list[dict]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_manifest_is_valid_for_the_latest_kubernetes():
    version = kubernetes_validate.latest_version()
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field
        kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


def test_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def containers() -> list[tuple[str, dict[str, str]]]:
    """(command, environment) of every container: the ConfigMaps it loads, then its own env."""
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents() if d["kind"] == "ConfigMap"}
    out = []
    for doc in documents():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            env.update({e["name"]: e["value"] for e in c.get("env", [])})
            out.append((c["args"][0], env))
    return out


@pytest.mark.parametrize("command, env", containers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_variable_is_a_flag_of_the_command_and_the_configuration_is_valid(command, env, monkeypatch):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = {f"KEYSTONE_{a.dest.upper()}" for a in sub._actions if a.dest != "help"}
    unknown = set(env) - flags
    assert not unknown, f"{command} has no flag for {sorted(unknown)}"
    for name in [k for k in os.environ if k.startswith("KEYSTONE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([command])
    config = config_from_args(args, _config_cls(command))
    assert config.kafka_bootstrap == env["KEYSTONE_KAFKA_BOOTSTRAP"]
    assert config.bronze_uri == env["KEYSTONE_BRONZE_URI"]


def _config_cls(command: str) -> type:
    from keystone_ingest.server.bronze.config import BronzeWorkerConfig
    from keystone_ingest.server.config import ServeConfig

    return {"serve": ServeConfig, "bronze": BronzeWorkerConfig}[command]


def test_the_ingest_replicas_write_no_bronze_and_the_workers_do():
    by_command = dict(containers())
    assert by_command["serve"]["KEYSTONE_BRONZE_URI"] == ""
    assert by_command["bronze"]["KEYSTONE_BRONZE_URI"].startswith("s3://")


def test_the_alert_rules_name_metrics_the_processes_export():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exported = set()
    for registry in (Metrics().registry, BronzeMetrics().registry):
        for family in registry.collect():
            # A labelled metric has no sample before its first use: its name then.
            exported |= {family.name + "_total" if family.type == "counter" else family.name}
    named = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in ("warning", "critical")
            named |= set(re.findall(r"\bkeystone_[a-z_]+", rule["expr"]))
    assert named and not named - exported, sorted(named - exported)
