#!/usr/bin/env python3
"""Checks that the manifests under deploy/ fit together and fit the service, which a schema cannot
tell: selectors that find the pods, ports that exist, probes that ask for a health entry the service
reports, the Secrets the Deployment reads shown by the examples, a termination grace period that
covers the shutdown, and the image's user.

Usage: python3 .ci/manifests_check.py (with PyYAML; .ci/manifests runs it in its tool folder)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
problems: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def load(folder: Path) -> list[tuple[Path, dict]]:
    documents = []
    for path in sorted(folder.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.relative_to(REPO), document))
    return documents


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def health_entries() -> set[str]:
    """ "" and every service of the contract, as src/app.rs reports them (observability.md)."""
    entries = {""}
    for proto in (REPO / "proto").rglob("*.proto"):
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        for service in re.findall(r"^service\s+(\w+)", text, re.M):
            entries.add(f"{package.group(1)}.{service}" if package else service)
    return entries


def image_user() -> str | None:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    return users[-1] if users else None


def main() -> int:
    documents = load(REPO / "deploy")
    examples = {p: d for p, d in documents if "examples" in p.parts}
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    for path, document in documents:
        by_kind.setdefault(document["kind"], []).append((path, document))
    deployments = [d for p, d in by_kind.get("Deployment", []) if p not in examples]
    check(len(deployments) == 1, f"expected one Deployment under deploy/, found {len(deployments)}")
    if not deployments:
        return report()
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    check(
        matches(spec["selector"]["matchLabels"], labels),
        "the Deployment's selector does not match its pod labels",
    )
    containers = pod["spec"]["containers"]
    check(len(containers) == 1, "expected one container")
    container = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    env = {e["name"]: e for e in container.get("env", [])}

    # Where the service listens and what the probes ask.
    grpc_port = ports.get("grpc")
    check(grpc_port is not None, "the container has no port named grpc")
    for name, variable in env.items():
        if name.endswith("_LISTEN") and "value" in variable:
            check(
                port_of(variable["value"]) in ports.values(),
                f"{name}={variable['value']}: no containerPort for it",
            )
    if "ONBOARDING_LISTEN" in env:
        check(
            port_of(env["ONBOARDING_LISTEN"]["value"]) == grpc_port, "ONBOARDING_LISTEN is not the grpc port"
        )
    entries = health_entries()
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_name)
        check(probe is not None, f"the container has no {probe_name}")
        if probe is None:
            continue
        grpc = probe.get("grpc")
        check(grpc is not None, f"{probe_name} is not a gRPC probe")
        if grpc is None:
            continue
        check(
            grpc["port"] == grpc_port,
            f"{probe_name} asks port {grpc['port']}, the service listens on {grpc_port}",
        )
        service = grpc.get("service", "")
        check(
            service in entries,
            f"{probe_name} asks for health entry {service!r}; the service reports {sorted(entries)}",
        )

    # Shutdown: the kubelet's grace must cover the preStop pause and the service's own grace.
    grace_ms = int(env.get("ONBOARDING_SHUTDOWN_GRACE_MS", {}).get("value", "10000"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(
        termination >= pre_stop + grace_ms / 1000 + 2,
        f"terminationGracePeriodSeconds {termination} < preStop {pre_stop} s "
        f"+ shutdown grace {grace_ms / 1000} s + 2 s",
    )

    # The image's user.
    user = image_user()
    security = pod["spec"].get("securityContext", {})
    if user is not None:
        check(
            str(security.get("runAsUser")) == user.split(":")[0],
            f"runAsUser {security.get('runAsUser')} is not the image's USER {user}",
        )

    # Two replicas that a disruption cannot both take.
    replicas = spec.get("replicas", 1)
    check(replicas >= 2, f"replicas: {replicas}; the service is meant to run at least two")
    budgets = [d for p, d in by_kind.get("PodDisruptionBudget", []) if p not in examples]
    check(len(budgets) == 1, f"expected one PodDisruptionBudget, found {len(budgets)}")
    for budget in budgets:
        check(
            matches(budget["spec"]["selector"]["matchLabels"], labels),
            "the PodDisruptionBudget's selector misses the pods",
        )
        check(
            budget["spec"].get("maxUnavailable", replicas) < replicas,
            "the PodDisruptionBudget lets every replica go at once",
        )

    # Services find the pods and a port that exists.
    services = [d for p, d in by_kind.get("Service", []) if p not in examples]
    check(len(services) >= 1, "no Service")
    for service in services:
        check(
            matches(service["spec"]["selector"], labels),
            f"Service {service['metadata']['name']}: its selector misses the pods",
        )
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            check(
                target in ports or target in ports.values(),
                f"Service {service['metadata']['name']}: targetPort {target} is not a container port",
            )

    # Every Secret the Deployment reads is shown, with its keys, in the examples.
    shown = {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for p, d in documents
        if p in examples and d["kind"] == "Secret"
    }
    for name, variable in env.items():
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            check(
                reference["key"] in shown.get(reference["name"], set()),
                f"{name} reads Secret {reference['name']} key {reference['key']}, "
                "which deploy/examples/ does not show",
            )
    check(
        all("examples" in p.parts for p, d in documents if d["kind"] == "Secret"),
        "a Secret outside deploy/examples/",
    )
    return report()


def report() -> int:
    for problem in problems:
        print(f"FAILED: {problem}")
    if problems:
        return 1
    print("the manifests fit together and fit the service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
