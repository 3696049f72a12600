"""deploy/chart_checks.py (run by `make chart-check`) catches what it promises to catch.

Pure unit tests on hand-made manifests: no helm, no cluster, no network.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chart_checks", ROOT / "deploy" / "chart_checks.py")
assert _spec and _spec.loader
cc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cc  # dataclasses look their module up
_spec.loader.exec_module(cc)

LABELS = {"app.kubernetes.io/name": "crm", "app.kubernetes.io/instance": "crm", "app.kubernetes.io/component": "sales"}
SECURE = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def deployment() -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "crm-sales", "labels": LABELS},
        "spec": {
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": "crm-sales",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "sales",
                            "image": "crm-sales:1",
                            "ports": [{"name": "grpc", "containerPort": 50051}],
                            "readinessProbe": {"grpc": {"port": 50051}},
                            "livenessProbe": {"grpc": {"port": 50051}},
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "512Mi"},
                            },
                            "securityContext": dict(SECURE),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(selector: dict | None = None, target: str = "grpc") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "crm-sales"},
        "spec": {"selector": selector or LABELS, "ports": [{"name": "grpc", "port": 50051, "targetPort": target}]},
    }


def account() -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "crm-sales"}}


def render(*docs: dict) -> Any:
    return cc.Render("test", [copy.deepcopy(d) for d in docs], "crm")


def test_selector_semantics():
    labels = {"a": "1", "b": "2"}
    assert cc.selector_matches({}, labels)
    assert cc.selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not cc.selector_matches({"matchLabels": {"a": "2"}}, labels)
    assert cc.selector_matches({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}, labels)
    assert not cc.selector_matches({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)
    assert cc.selector_matches({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["9"]}]}, labels)
    assert not cc.selector_matches({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, labels)


def test_a_sound_workload_passes():
    r = render(deployment(), service(), account())
    cc.check_workloads(r)
    cc.check_services(r)
    assert r.problems == []
    assert r.checks > 10


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda c, p: c.pop("readinessProbe"), "no readinessProbe"),
        (lambda c, p: c.pop("livenessProbe"), "no livenessProbe"),
        (lambda c, p: c["resources"].pop("limits"), "no limits.cpu"),
        (lambda c, p: c["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda c, p: c["securityContext"].update(runAsNonRoot=False), "runAsNonRoot is not true"),
        (lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda c, p: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda c, p: c["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
        (lambda c, p: c["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda c, p: p.update(volumes=[{"name": "tmp", "hostPath": {"path": "/tmp"}}]), "/tmp is not an emptyDir"),
        (lambda c, p: p.update(automountServiceAccountToken=True), "automountServiceAccountToken"),
        (lambda c, p: p.update(serviceAccountName="nobody"), "ServiceAccount 'nobody' not rendered"),
    ],
)
def test_workload_faults_are_reported(mutate, complaint):
    dep = deployment()
    pod = dep["spec"]["template"]["spec"]
    mutate(pod["containers"][0], pod)
    r = render(dep, account())
    cc.check_workloads(r)
    assert any(complaint in p for p in r.problems), r.problems


def test_service_must_select_existing_pods_and_ports():
    r = render(deployment(), service(selector={"app.kubernetes.io/component": "salse"}), account())
    cc.check_services(r)
    assert any("selects no pods" in p for p in r.problems)
    r = render(deployment(), service(target="http"), account())
    cc.check_services(r)
    assert any("targets 'http'" in p for p in r.problems)


def test_network_policy_must_select_existing_pods_and_peers():
    policy: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "crm-sales"},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "sales"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gatewy"}}}]}],
        },
    }
    r = render(deployment(), policy, account())
    cc.check_network_policies(r)
    assert any("selects no pods of the release" in p for p in r.problems)
    assert any("no default-deny" in p for p in r.problems)
    policy["spec"]["podSelector"] = {"matchLabels": {"app.kubernetes.io/component": "nothing"}}
    r = render(deployment(), policy, account())
    cc.check_network_policies(r)
    assert any("podSelector selects no pods" in p for p in r.problems)


def test_missing_component_objects_are_reported():
    r = render(deployment(), service(), account())
    cc.check_components(r, {"sales": ["crm-sales", "serve"]})
    missing = {p.split("no ")[-1].split(" ")[0] for p in r.problems if ": no " in p}
    assert missing == {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}


def test_deployment_must_not_override_the_image_command():
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"][0]["command"] = ["crm-sales", "serve", "--debug"]
    r = render(dep, service(), account())
    cc.check_components(r, {"sales": ["crm-sales", "serve"]})
    assert any("overrides the image's command" in p for p in r.problems)


def test_checkov_findings_need_a_live_waiver(tmp_path):
    report = tmp_path / "checkov.json"
    failed = [
        {
            "check_id": "CKV_K8S_43",
            "check_name": "digest",
            "resource": "Deployment.crm.crm-sales",
            "file_path": "/var/chart/default.yaml",
        },
        {
            "check_id": "CKV_K8S_35",
            "check_name": "env",
            "resource": "StatefulSet.crm.crm-postgresql",
            "file_path": "/var/chart/default.yaml",
        },
    ]
    report.write_text(
        json.dumps(
            {
                "check_type": "kubernetes",
                "results": {"failed_checks": failed},
                "summary": {"passed": 10, "failed": 2, "skipped": 0, "parsing_errors": 0},
            }
        )
    )
    findings, counts = cc.load_checkov(report)
    assert counts == {"passed": 10, "failed": 2, "skipped": 0}
    assert {f.render for f in findings} == {"default"}
    waivers = [
        {"check": "CKV_K8S_43", "reason": "tags"},
        {"check": "CKV_K8S_35", "reason": "env config", "resources": ["Deployment.*"]},
        {"check": "CKV_K8S_15", "reason": "no longer needed"},
    ]
    unwaived, waived, problems = cc.judge_findings(findings, waivers)
    assert [f.resource for f in unwaived] == ["StatefulSet.crm.crm-postgresql"]  # outside the waiver's scope
    assert waived == {"CKV_K8S_43": 1}
    assert len(problems) == 2 and all("stale waiver" in p for p in problems)
    _, _, problems = cc.judge_findings(findings, [{"check": "CKV_K8S_43"}])
    assert problems and "reason" in problems[0]


def test_empty_checkov_report_is_an_error(tmp_path):
    report = tmp_path / "checkov.json"
    report.write_text("")
    with pytest.raises(ValueError, match="empty"):
        cc.load_checkov(report)


def test_procfile_parser(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("customer: crm-customer serve\n\ngateway: crm-gateway serve\n")
    assert cc.read_procfile(procfile) == {"customer": ["crm-customer", "serve"], "gateway": ["crm-gateway", "serve"]}
    assert list(cc.read_procfile(ROOT / "deploy" / "Procfile"))[-1] == "gateway"


def test_flows_configured_in_the_environment_must_be_allowed():
    sales = deployment()
    sales["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "crm-sales"}}]
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "crm-sales"},
        "data": {"SALES_CUSTOMER_ADDR": "crm-customer:50051"},
    }
    customer = deployment()
    customer["metadata"]["name"] = "crm-customer"
    customer_labels = {**LABELS, "app.kubernetes.io/component": "customer"}
    customer["spec"]["template"]["metadata"]["labels"] = customer_labels
    customer_svc = service(selector=customer_labels)
    customer_svc["metadata"]["name"] = "crm-customer"
    deny: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "crm-default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    r = render(sales, config, customer, customer_svc, account(), deny)
    cc.check_flows(r)
    assert any("may not reach DNS" in p for p in r.problems)
    assert any("crm-customer:50051: no NetworkPolicy egress" in p for p in r.problems)
    assert any("crm-customer:50051: no NetworkPolicy ingress" in p for p in r.problems)

    allow: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "crm-allow"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}, {"to": [{"podSelector": {}}]}],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": LABELS}}], "ports": [{"port": 50051, "protocol": "TCP"}]}
            ],
        },
    }
    r = render(sales, config, customer, customer_svc, account(), deny, allow)
    cc.check_flows(r)
    assert r.problems == []
