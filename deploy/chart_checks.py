#!/usr/bin/env python3
"""What `make chart-check` asserts about the rendered chart beyond `helm lint`.

Given the manifests `helm template` rendered for each value set (var/chart/<set>.yaml), it
  1. validates every resource against the Kubernetes OpenAPI schemas (kubernetes-validate, strict);
  2. judges checkov's JSON reports against charts/crm/checkov-waivers.yaml: every failed check must be
     waived with a reason, and every waiver must still cover a finding;
  3. checks the invariants no schema can see: each component of deploy/Procfile has its Deployment,
     Service, ServiceAccount, HPA, PDB and ConfigMap; every workload is probed, limited and non-root;
     every Service and NetworkPolicy selects pods that exist; every reference resolves; the
     configuration follows docs/architecture.md; hook Jobs run the documented commands at the right time.
It prints the counts and exits non-zero on any problem.

Run with the project venv (PyYAML, kubernetes-validate); the functions are importable for tests.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GRPC_PORT = 50051
HTTP_PORT = 8080
METRICS_PORT = 9464
MIN_UID = 10000
# Kinds whose schema kubernetes-validate does not ship (CRDs the chart may render when asked to).
CRD_GROUPS = {"monitoring.coreos.com"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
COMPONENT_KINDS = (
    "Deployment",
    "Service",
    "ServiceAccount",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ConfigMap",
)
Manifest = dict[str, Any]


# --------------------------------------------------------------------------------------------- input
def load_manifests(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def read_procfile(path: Path) -> dict[str, list[str]]:
    """deploy/Procfile as {process: argv}, in file order."""
    processes: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not command.strip():
            raise ValueError(f"{path}: not a 'name: command' line: {line!r}")
        processes[name.strip()] = command.split()
    return processes


def rid(doc: Manifest) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# ------------------------------------------------------------------------------- kubernetes-validate
@dataclass
class SchemaResult:
    validated: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def validate_schemas(docs: Iterable[Manifest], kube_version: str) -> SchemaResult:
    from kubernetes_validate import utils as kv

    result = SchemaResult()
    for doc in docs:
        try:
            kv.validate(doc, kube_version, strict=True)
            result.validated += 1
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            result.errors.append(f"{rid(doc)}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
                result.skipped += 1
            else:
                result.errors.append(f"{rid(doc)}: {e.message}")
    return result


# ------------------------------------------------------------------------------------------ checkov
@dataclass(frozen=True)
class Finding:
    check: str
    name: str
    resource: str
    render: str


def load_checkov(path: Path) -> tuple[list[Finding], Counter[str]]:
    """Failed checks and the summary counts (passed, failed, skipped) of one checkov JSON report."""
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path}: empty checkov report (see the .log beside it)")
    data = json.loads(text)
    reports = data if isinstance(data, list) else [data]
    findings: list[Finding] = []
    counts: Counter[str] = Counter()
    for report in reports:
        if "results" not in report:  # checkov prints a bare summary when it found nothing to scan
            raise ValueError(f"{path}: checkov scanned nothing: {report}")
        summary = report["summary"]
        if summary.get("parsing_errors"):
            raise ValueError(f"{path}: checkov could not parse {summary['parsing_errors']} file(s)")
        for key in ("passed", "failed", "skipped"):
            counts[key] += summary[key]
        for f in report["results"]["failed_checks"]:
            stem = Path(f["file_path"]).name
            render = "Dockerfile" if stem == "Dockerfile" else Path(stem).stem
            findings.append(Finding(f["check_id"], f["check_name"], f["resource"], render))
    return findings, counts


def waiver_covers(waiver: dict[str, Any], finding: Finding) -> bool:
    if waiver["check"] != finding.check:
        return False
    if "renders" in waiver and finding.render not in waiver["renders"]:
        return False
    patterns = waiver.get("resources", ["*"])
    return any(fnmatch.fnmatchcase(finding.resource, p) for p in patterns)


def judge_findings(
    findings: list[Finding], waivers: list[dict[str, Any]]
) -> tuple[list[Finding], Counter[str], list[str]]:
    """(unwaived findings, waived count per check, problems with the waivers themselves)."""
    problems = []
    for i, w in enumerate(waivers):
        if not str(w.get("check", "")).strip() or not str(w.get("reason", "")).strip():
            problems.append(f"waiver #{i + 1} needs both 'check' and 'reason': {w}")
        unknown = set(w) - {"check", "reason", "resources", "renders"}
        if unknown:
            problems.append(f"waiver {w.get('check')}: unknown keys {sorted(unknown)}")
    if problems:
        return findings, Counter(), problems
    unwaived: list[Finding] = []
    waived: Counter[str] = Counter()
    used: set[int] = set()
    for finding in findings:
        covering = [i for i, w in enumerate(waivers) if waiver_covers(w, finding)]
        if covering:
            waived[finding.check] += 1
            used.update(covering)
        else:
            unwaived.append(finding)
    for i, w in enumerate(waivers):
        if i not in used:
            problems.append(f"stale waiver {w['check']} ({w.get('resources', ['*'])}): it covers no finding; remove it")
    return unwaived, waived, problems


# ---------------------------------------------------------------------------------------- selectors
def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels/matchExpressions) against a label set; {} matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def pod_templates(docs: Iterable[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, pod template) for every workload."""
    for doc in docs:
        kind = doc["kind"]
        if kind == "Pod":
            yield doc, doc
        elif kind == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]
        elif kind in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]


def labels_of(template: Manifest) -> dict[str, str]:
    return (template.get("metadata") or {}).get("labels") or {}


# --------------------------------------------------------------------------------------- invariants
class Render:
    """One rendered value set, indexed."""

    def __init__(self, name: str, docs: list[Manifest], release: str):
        self.name, self.docs, self.release = name, docs, release
        self.by_kind: dict[str, dict[str, Manifest]] = {}
        for doc in docs:
            self.by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        self.templates = list(pod_templates(docs))
        self.problems: list[str] = []
        self.checks = 0
        self.external_secrets: set[str] = set()

    def get(self, kind: str, name: str) -> Manifest | None:
        return self.by_kind.get(kind, {}).get(name)

    def expect(self, ok: bool, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.problems.append(f"[{self.name}] {message}")
        return ok

    def fullname(self, name: str) -> str:
        return f"{self.release}-{name}"

    @property
    def evaluation(self) -> bool:
        return self.get("StatefulSet", self.fullname("postgresql")) is not None


def check_render(render: Render, processes: dict[str, list[str]]) -> None:
    check_components(render, processes)
    check_workloads(render)
    check_services(render)
    check_network_policies(render)
    check_flows(render)
    check_scaling(render)
    check_references(render)
    check_configuration(render, processes)
    check_hooks(render, processes)
    check_ingress(render)


def check_components(r: Render, processes: dict[str, list[str]]) -> None:
    for name in processes:
        for kind in COMPONENT_KINDS:
            r.expect(r.get(kind, r.fullname(name)) is not None, f"component {name}: no {kind} {r.fullname(name)}")
        sa = r.get("ServiceAccount", r.fullname(name))
        if sa:
            r.expect(
                sa.get("automountServiceAccountToken") is False, f"{rid(sa)}: automountServiceAccountToken is not false"
            )
        dep = r.get("Deployment", r.fullname(name))
        if not dep:
            continue
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        main = pod["containers"][0]
        r.expect("replicas" not in spec, f"{rid(dep)}: sets replicas, but its HPA owns the count")
        r.expect(
            "command" not in main and "args" not in main,
            f"{rid(dep)}: overrides the image's command (it must be the Procfile's, from the image)",
        )
        r.expect(pod.get("serviceAccountName") == r.fullname(name), f"{rid(dep)}: not its own ServiceAccount")
        keys = {c.get("topologyKey") for c in pod.get("topologySpreadConstraints") or []}
        r.expect(
            {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys,
            f"{rid(dep)}: topologySpreadConstraints must spread over nodes and zones",
        )
        ready, live = main.get("readinessProbe") or {}, main.get("livenessProbe") or {}
        if name == "gateway":
            for probe, path in ((ready, "/readyz"), (live, "/healthz")):
                get = probe.get("httpGet") or {}
                r.expect(
                    get.get("path") == path and get.get("port") in (HTTP_PORT, "http"),
                    f"{rid(dep)}: expected an httpGet {path} probe on {HTTP_PORT}, got {probe}",
                )
            ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
            r.expect(ports.get("http") == HTTP_PORT, f"{rid(dep)}: http port is not {HTTP_PORT}")
        else:
            for kind, probe in (("readiness", ready), ("liveness", live)):
                r.expect(
                    (probe.get("grpc") or {}).get("port") == GRPC_PORT,
                    f"{rid(dep)}: {kind} probe is not a grpc probe on {GRPC_PORT}",
                )
            ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
            r.expect(ports.get("grpc") == GRPC_PORT, f"{rid(dep)}: grpc port is not {GRPC_PORT}")
        r.expect(
            {p["name"]: p["containerPort"] for p in main.get("ports", [])}.get("metrics") == METRICS_PORT,
            f"{rid(dep)}: metrics port is not {METRICS_PORT}",
        )


def effective(pod_sc: dict[str, Any], container_sc: dict[str, Any], key: str) -> Any:
    return container_sc.get(key, pod_sc.get(key))


def check_workloads(r: Render) -> None:
    for workload, template in r.templates:
        pod = template["spec"]
        pod_sc = pod.get("securityContext") or {}
        where = rid(workload)
        r.expect(
            pod.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken is not false"
        )
        sa = pod.get("serviceAccountName")
        r.expect(bool(sa) and r.get("ServiceAccount", sa) is not None, f"{where}: ServiceAccount {sa!r} not rendered")
        mounts_tmp = False
        for c in pod.get("initContainers", []) + pod["containers"]:
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext") or {}
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    r.expect(res in (resources.get(section) or {}), f"{at}: no {section}.{res}")
            r.expect(effective(pod_sc, sc, "runAsNonRoot") is True, f"{at}: runAsNonRoot is not true")
            uid = effective(pod_sc, sc, "runAsUser")
            r.expect(uid is not None and uid >= MIN_UID, f"{at}: runAsUser {uid} (want a fixed uid >= {MIN_UID})")
            r.expect(sc.get("readOnlyRootFilesystem") is True, f"{at}: readOnlyRootFilesystem is not true")
            r.expect(sc.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation is not false")
            r.expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{at}: capabilities do not drop ALL")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            r.expect(seccomp == "RuntimeDefault", f"{at}: seccompProfile is {seccomp}, not RuntimeDefault")
            if workload["kind"] in LONG_RUNNING_KINDS and c in pod["containers"]:
                r.expect("readinessProbe" in c, f"{at}: no readinessProbe")
                r.expect("livenessProbe" in c, f"{at}: no livenessProbe")
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmp = [m["name"] for c in pod["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        r.expect(
            mounts_tmp and all("emptyDir" in volumes.get(n, {}) for n in tmp),
            f"{where}: /tmp is not an emptyDir (the root filesystem is read-only)",
        )


def pods_matching(r: Render, selector: dict[str, Any], kinds: set[str] | None = None) -> list[Manifest]:
    return [
        template
        for workload, template in r.templates
        if (kinds is None or workload["kind"] in kinds) and selector_matches(selector, labels_of(template))
    ]


def check_services(r: Render) -> None:
    for svc in r.by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector") or {}
        if not r.expect(bool(selector), f"{rid(svc)}: no selector"):
            continue
        pods = pods_matching(r, {"matchLabels": selector}, LONG_RUNNING_KINDS)
        if not r.expect(bool(pods), f"{rid(svc)}: selects no pods ({selector})"):
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            found = any(
                target in (p.get("name"), p.get("containerPort"))
                for pod in pods
                for c in pod["spec"]["containers"]
                for p in c.get("ports", [])
            )
            r.expect(found, f"{rid(svc)}: port {port.get('name')} targets {target!r}, which no selected container has")


def check_network_policies(r: Render) -> None:
    for np in r.by_kind.get("NetworkPolicy", {}).values():
        spec = np["spec"]
        r.expect(bool(pods_matching(r, spec["podSelector"])), f"{rid(np)}: podSelector selects no pods")
        rules = [(rule, "from") for rule in spec.get("ingress") or []] + [
            (rule, "to") for rule in spec.get("egress") or []
        ]
        for rule, key in rules:
            for peer in rule.get(key) or []:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    r.expect(
                        bool(pods_matching(r, peer["podSelector"])),
                        f"{rid(np)}: peer {peer['podSelector']} selects no pods of the release",
                    )
    if r.by_kind.get("NetworkPolicy"):
        deny = [
            np
            for np in r.by_kind["NetworkPolicy"].values()
            if not np["spec"].get("ingress")
            and not np["spec"].get("egress")
            and {"Ingress", "Egress"} <= set(np["spec"].get("policyTypes", []))
        ]
        r.expect(bool(deny), "NetworkPolicies are on, but there is no default-deny policy")
        for workload, template in r.templates:
            covered = [np for np in deny if selector_matches(np["spec"]["podSelector"], labels_of(template))]
            r.expect(bool(covered), f"{rid(workload)}: not under the default-deny NetworkPolicy")


def policies_for(r: Render, labels: dict[str, str], direction: str) -> list[Manifest]:
    """The NetworkPolicies that isolate pods with these labels in one direction (Ingress/Egress)."""
    selected = []
    for np in r.by_kind.get("NetworkPolicy", {}).values():
        spec = np["spec"]
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if direction in types and selector_matches(spec["podSelector"], labels):
            selected.append(np)
    return selected


def rule_has_port(rule: dict[str, Any], port: int, protocol: str = "TCP", names: Iterable[str] = ()) -> bool:
    ports = rule.get("ports")
    return not ports or any(
        (p.get("port") is None or p.get("port") == port or p.get("port") in names)
        and p.get("protocol", "TCP") == protocol
        for p in ports
    )


def policy_allows(
    r: Render, pod: dict[str, str], peer: dict[str, str] | None, port: int, direction: str, protocol: str = "TCP"
) -> bool:
    """Whether the policies let pod (labels) talk to / hear from a pod of the release (peer labels) on
    port. peer None means "some destination outside the release" (DNS): any peer entry will do."""
    policies = policies_for(r, pod, direction)
    if not policies:
        return True  # not isolated in that direction
    key, peer_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for np in policies:
        for rule in np["spec"].get(key) or []:
            if not rule_has_port(rule, port, protocol):
                continue
            peers = rule.get(peer_key)
            if not peers:
                return True
            for entry in peers:
                if peer is None:
                    return True
                # Only same-namespace pod selectors can name pods of the release.
                same_namespace = "podSelector" in entry and not {"namespaceSelector", "ipBlock"} & set(entry)
                if same_namespace and selector_matches(entry["podSelector"], peer):
                    return True
    return False


ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?(?:[^@/\s,]+@)?([a-z0-9][a-z0-9.-]*):([0-9]{1,5})")


def env_values(r: Render, template: Manifest) -> Iterator[tuple[str, str]]:
    """Every (name, value) of a pod's environment: literal env, ConfigMaps, and rendered Secrets."""
    pod = template["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                yield from ((r.get("ConfigMap", src["configMapRef"]["name"]) or {}).get("data") or {}).items()
        for env in c.get("env", []):
            if "value" in env:
                yield env["name"], str(env["value"])
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            secret = r.get("Secret", ref["name"]) if ref else None
            if ref and secret and ref["key"] in (secret.get("data") or {}):
                yield env["name"], base64.b64decode(secret["data"][ref["key"]]).decode()


# What a hook Job talks to: it carries its component's whole environment but only migrates or
# configures the stream, so only its database and NATS addresses must be reachable.
JOB_ADDRESS_VARIABLES = re.compile(r"(_DATABASE_URL|_NATS_URL)$")


def check_flows(r: Render) -> None:
    """With NetworkPolicies on, every address a pod is configured with that names a Service of the
    release (<release>-x:port, in URLs too) is reachable: egress from the pod and ingress at the target;
    and every pod isolated for egress may resolve names (UDP 53)."""
    if not r.by_kind.get("NetworkPolicy"):
        return
    for workload, template in r.templates:
        src = labels_of(template)
        job = workload["kind"] in {"Job", "CronJob"}
        addresses = {
            (host, int(port))
            for name, value in env_values(r, template)
            if not job or JOB_ADDRESS_VARIABLES.search(name)
            for host, port in ADDRESS.findall(value)
        }
        if addresses:  # it is configured with host names, so it must resolve them
            r.expect(policy_allows(r, src, None, 53, "Egress", "UDP"), f"{rid(workload)}: may not reach DNS (UDP 53)")
        for host, port in sorted(a for a in addresses if a[0].startswith(f"{r.release}-")):
            svc = r.get("Service", host.split(".")[0])
            if not r.expect(svc is not None, f"{rid(workload)}: configured with {host}:{port}, which is no Service"):
                continue
            assert svc is not None
            ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
            if not r.expect(bool(ports), f"{rid(workload)}: Service {host} has no port {port}"):
                continue
            target = ports[0].get("targetPort", port)
            for dst_template in pods_matching(r, {"matchLabels": svc["spec"]["selector"]}, LONG_RUNNING_KINDS):
                dst = labels_of(dst_template)
                if dst == src:
                    continue  # its own Service (the gateway's CRM_JWKS_URL): not a network flow to check
                number = next(
                    (
                        cp["containerPort"]
                        for c in dst_template["spec"]["containers"]
                        for cp in c.get("ports", [])
                        if target in (cp.get("name"), cp["containerPort"])
                    ),
                    port,
                )
                r.expect(
                    policy_allows(r, src, dst, number, "Egress"),
                    f"{rid(workload)} -> {host}:{port}: no NetworkPolicy egress allows it",
                )
                r.expect(
                    policy_allows(r, dst, src, number, "Ingress"),
                    f"{rid(workload)} -> {host}:{port}: no NetworkPolicy ingress at {host} allows it",
                )


def check_scaling(r: Render) -> None:
    for hpa in r.by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        dep = r.get(target["kind"], target["name"])
        r.expect(dep is not None, f"{rid(hpa)}: scales {target['kind']}/{target['name']}, which is not rendered")
        r.expect(
            hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], f"{rid(hpa)}: minReplicas > maxReplicas"
        )
    for pdb in r.by_kind.get("PodDisruptionBudget", {}).values():
        spec = pdb["spec"]
        r.expect(bool(pods_matching(r, spec["selector"], LONG_RUNNING_KINDS)), f"{rid(pdb)}: selects no pods")
        scaler = r.get("HorizontalPodAutoscaler", pdb["metadata"]["name"])
        min_available = spec.get("minAvailable")
        if scaler and isinstance(min_available, int):
            r.expect(
                min_available < scaler["spec"].get("minReplicas", 1),
                f"{rid(pdb)}: minAvailable {min_available} >= minReplicas: no pod could ever be evicted",
            )
        if isinstance(spec.get("maxUnavailable"), int):
            r.expect(spec["maxUnavailable"] >= 1, f"{rid(pdb)}: maxUnavailable 0 blocks every drain")


def check_references(r: Render) -> None:
    """ConfigMaps and Secrets that pods use exist (or are declared external), with the keys used."""
    for workload, template in r.templates:
        pod = template["spec"]
        where = rid(workload)
        refs: list[tuple[str, str, str | None]] = []  # (kind, name, key)
        for c in pod.get("initContainers", []) + pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    refs.append(("ConfigMap", src["configMapRef"]["name"], None))
                if "secretRef" in src:
                    refs.append(("Secret", src["secretRef"]["name"], None))
            for env in c.get("env", []):
                source = env.get("valueFrom") or {}
                if "configMapKeyRef" in source:
                    refs.append(("ConfigMap", source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"]))
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]))
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                refs += [("ConfigMap", vol["configMap"]["name"], i["key"]) for i in vol["configMap"].get("items", [])]
                refs.append(("ConfigMap", vol["configMap"]["name"], None))
            if "secret" in vol:
                refs += [("Secret", vol["secret"]["secretName"], i["key"]) for i in vol["secret"].get("items", [])]
                refs.append(("Secret", vol["secret"]["secretName"], None))
        for kind, name, key in refs:
            obj = r.get(kind, name)
            if obj is None and kind == "Secret":
                r.expect(not r.evaluation, f"{where}: Secret {name} is neither rendered nor an existingSecret")
                r.external_secrets.add(name)
                continue
            if r.expect(obj is not None, f"{where}: {kind} {name} is not rendered") and obj:
                data = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
                r.expect(key is None or key in data, f"{where}: {kind} {name} has no key {key}")
    if not r.evaluation:
        r.expect(
            not r.by_kind.get("Secret"),
            f"production render generates Secrets {sorted(r.by_kind.get('Secret', {}))}: use existingSecret",
        )


def check_configuration(r: Render, processes: dict[str, list[str]]) -> None:
    """The ConfigMaps against docs/architecture.md (ports and addresses in the cluster)."""
    jwks = f"http://{r.fullname('gateway')}:{HTTP_PORT}/.well-known/jwks.json"
    services = [name for name in processes if name != "gateway"]
    for name in processes:
        cm = r.get("ConfigMap", r.fullname(name))
        if cm is None:
            continue
        data = cm.get("data") or {}
        prefix = name.upper()
        expected = {
            "CRM_LOG_FORMAT": "json",
            "OTEL_SERVICE_NAME": name,
            "CRM_JWKS_URL": jwks,
            f"{prefix}_METRICS_PORT": str(METRICS_PORT),
        }
        if name == "gateway":
            expected |= {"GATEWAY_PORT": str(HTTP_PORT), "GATEWAY_HOST": "0.0.0.0"}
            for svc in services:
                expected[f"GATEWAY_{svc.upper()}_ADDR"] = f"{r.fullname(svc)}:{GRPC_PORT}"
                target = r.get("Service", r.fullname(svc))
                r.expect(
                    target is not None and any(p["port"] == GRPC_PORT for p in target["spec"]["ports"]),
                    f"gateway routes {svc} to {r.fullname(svc)}:{GRPC_PORT}, which is no Service port",
                )
        else:
            expected |= {f"{prefix}_GRPC_PORT": str(GRPC_PORT), f"{prefix}_GRPC_HOST": "0.0.0.0"}
        for key, value in expected.items():
            r.expect(data.get(key) == value, f"{rid(cm)}: {key}={data.get(key)!r}, expected {value!r}")
        dep = r.get("Deployment", r.fullname(name))
        if dep:
            env = {e["name"] for c in dep["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
            r.expect(f"{prefix}_DATABASE_URL" in env, f"{rid(dep)}: no {prefix}_DATABASE_URL from a Secret")
            r.expect(
                f"{prefix}_MIGRATION_DATABASE_URL" not in env,
                f"{rid(dep)}: the owner-role URL belongs to the migration Job only",
            )
            nats = "CRM_NATS_URL" in data or "CRM_NATS_URL" in env
            r.expect(nats, f"{rid(dep)}: CRM_NATS_URL is neither in the ConfigMap nor from a Secret")


def hook_phases(job: Manifest) -> set[str]:
    annotations = job["metadata"].get("annotations") or {}
    return set(filter(None, annotations.get("helm.sh/hook", "").split(",")))


def check_hooks(r: Render, processes: dict[str, list[str]]) -> None:
    """Migrations run `crm-<name> migrate` with the owner role before a component serves, and the
    stream Job runs crmctl from the gateway image. A hook can only use what exists before it: in
    production (external PostgreSQL and NATS) the Jobs run pre-install/pre-upgrade; an evaluation
    install's PostgreSQL and NATS are objects of the release, so its Deployments migrate in an init
    container and the stream Job runs post-install/post-upgrade."""
    phases = {"post-install", "post-upgrade"} if r.evaluation else {"pre-install", "pre-upgrade"}
    for name in processes:
        command, prefix = [f"crm-{name}", "migrate"], name.upper()
        job = r.get("Job", r.fullname(f"migrate-{name}"))
        runner: Manifest | None = None
        if r.evaluation:
            r.expect(job is None, f"{r.fullname(f'migrate-{name}')}: a pre-install Job cannot reach the evaluation DB")
            dep = r.get("Deployment", r.fullname(name)) or {"spec": {"template": {"spec": {}}}}
            init = dep["spec"]["template"]["spec"].get("initContainers", [])
            runner = next((c for c in init if c.get("command") == command), None)
            r.expect(runner is not None, f"Deployment {r.fullname(name)}: no init container running {command}")
        elif r.expect(job is not None, f"no migration Job {r.fullname(f'migrate-{name}')}") and job:
            runner = job["spec"]["template"]["spec"]["containers"][0]
            r.expect(runner.get("command") == command, f"{rid(job)}: runs {runner.get('command')}, not {command}")
            r.expect(hook_phases(job) == {"pre-install", "pre-upgrade"}, f"{rid(job)}: phases {hook_phases(job)}")
        if runner is not None:
            env = {e["name"] for e in runner.get("env", [])}
            r.expect(f"{prefix}_MIGRATION_DATABASE_URL" in env, f"migrate {name}: no {prefix}_MIGRATION_DATABASE_URL")
    job = r.get("Job", r.fullname("ensure-stream"))
    if r.expect(job is not None, f"no Job {r.fullname('ensure-stream')}") and job:
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = container.get("command") or []
        r.expect(command[:3] == ["crmctl", "events", "ensure-stream"], f"{rid(job)}: runs {command}")
        replicas = int(command[command.index("--replicas") + 1]) if "--replicas" in command else 0
        # The design's scale path: a 3-node JetStream cluster with 3 replicas outside evaluation.
        r.expect(
            replicas == (1 if r.evaluation else 3),
            f"{rid(job)}: --replicas {replicas} ({'evaluation: 1 server' if r.evaluation else 'production: 3'})",
        )
        r.expect(hook_phases(job) == phases, f"{rid(job)}: hook phases {hook_phases(job)}, expected {phases}")
        gateway = r.get("Deployment", r.fullname("gateway"))
        r.expect(
            gateway is not None and container["image"] == gateway["spec"]["template"]["spec"]["containers"][0]["image"],
            f"{rid(job)}: crmctl must come from the gateway image",
        )


def check_ingress(r: Render) -> None:
    for ing in r.by_kind.get("Ingress", {}).values():
        hosts = [rule.get("host") for rule in ing["spec"].get("rules", [])]
        tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
        r.expect(any(h and h.startswith("*.") for h in hosts), f"{rid(ing)}: no wildcard tenant host")
        r.expect(set(hosts) <= tls_hosts, f"{rid(ing)}: hosts {sorted(set(hosts) - tls_hosts)} are not under TLS")
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = r.get("Service", backend["name"])
                port = backend["port"]
                r.expect(
                    svc is not None
                    and any(
                        port.get("name") == p.get("name") or port.get("number") == p["port"]
                        for p in svc["spec"]["ports"]
                    ),
                    f"{rid(ing)}: backend {backend} is not a rendered Service port",
                )


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("renders", nargs="+", type=Path, help="var/chart/<set>.yaml files")
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("--release", default="crm")
    parser.add_argument("--procfile", type=Path, required=True)
    parser.add_argument("--checkov", type=Path, action="append", default=[], help="checkov JSON report")
    parser.add_argument("--waivers", type=Path, required=True)
    args = parser.parse_args(argv)

    processes = read_procfile(args.procfile)
    failures: list[str] = []
    totals: Counter[str] = Counter()
    print(f"{'value set':<12} {'resources':>9} {'validated':>9} {'CRD':>4} {'invariants':>10}")
    for path in args.renders:
        docs = load_manifests(path)
        schema = validate_schemas(docs, args.kube_version)
        render = Render(path.stem, docs, args.release)
        check_render(render, processes)
        failures += [f"[{path.stem}] schema: {e}" for e in schema.errors] + render.problems
        totals.update(resources=len(docs), validated=schema.validated, skipped=schema.skipped, checks=render.checks)
        print(f"{path.stem:<12} {len(docs):>9} {schema.validated:>9} {schema.skipped:>4} {render.checks:>10}")
        if render.external_secrets:
            print(f"{'':<12} existing Secrets referenced: {', '.join(sorted(render.external_secrets))}")

    findings: list[Finding] = []
    checkov: Counter[str] = Counter()
    for report in args.checkov:
        try:
            found, counts = load_checkov(report)
        except (OSError, ValueError) as exc:
            failures.append(f"checkov report: {exc}")
            continue
        findings += found
        checkov.update(counts)
    waivers = (yaml.safe_load(args.waivers.read_text()) or {}).get("waivers") or []
    unwaived, waived, waiver_problems = judge_findings(findings, waivers)
    failures += waiver_problems
    failures += [f"checkov {f.check} ({f.name}) on {f.resource} [{f.render}]: not waived" for f in unwaived]

    print(
        f"kubernetes-validate {args.kube_version} --strict: {totals['resources']} resources rendered, "
        f"{totals['validated']} validated, {totals['skipped']} skipped (CRDs: {', '.join(sorted(CRD_GROUPS))}), "
        f"{sum(1 for f in failures if '] schema:' in f)} invalid"
    )
    print(
        f"checkov: {checkov['passed']} passed, {checkov['failed']} failed "
        f"({sum(waived.values())} waived: {', '.join(f'{k} x{v}' for k, v in sorted(waived.items())) or 'none'}; "
        f"{len(unwaived)} not waived), {checkov['skipped']} skipped"
    )
    print(f"invariants: {totals['checks']} checked over {len(args.renders)} value sets")
    if failures:
        print(f"\n{len(failures)} problem(s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("chart checks: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
