"""Every overlay renders; core kinds validate against Kubernetes' schemas, custom ones against the
CRDs in ../shared/k8s-crds; checkov finds nothing; and the properties that
docs/operations/kubernetes.md promises hold."""

from __future__ import annotations

import copy
import json

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream_worker.config import Settings
from tests.deploy.conftest import CRDS, DEPLOY, OVERLAYS, REPO_ROOT, checkov_path, kustomize_command, run

CUSTOM_GROUPS = ("keda.sh", "kafka.strimzi.io", "monitoring.coreos.com")
# Every STREAMREC_* name the deployment sets is a real setting.
PENDING_SETTINGS: set[str] = set()


def is_custom(resource: dict) -> bool:
    return resource["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema of that version, from every CRD file."""
    if not CRDS.is_dir():
        pytest.fail(f"the CRD schemas are missing: expected {CRDS} (shared/k8s-crds beside the clone)")
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = strict(schema)
    return schemas


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused, as the API server's strict field validation does
    (CRD schemas leave additionalProperties open; a misspelt or old-API field would pass)."""
    schema = copy.deepcopy(schema)

    def close(node: object) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def test_every_overlay_renders_the_expected_kinds(resources):
    core = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    core |= {"StatefulSet", "Deployment"}  # the workers, the trainer
    custom = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
    for overlay in OVERLAYS:
        kinds = {r["kind"] for r in resources[overlay]}
        assert core | custom <= kinds, f"{overlay} lacks {(core | custom) - kinds}"
    assert {"KafkaTopic", "KafkaUser"} <= {r["kind"] for r in resources["strimzi"]}


def test_core_kinds_validate_against_the_kubernetes_schemas(resources):
    version = kubernetes_validate.latest_version()
    checked = 0
    for overlay in OVERLAYS:
        for resource in resources[overlay]:
            if is_custom(resource):
                continue
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{overlay}: {resource['kind']} {resource['metadata']['name']}: {error.message}")
            checked += 1
    assert checked >= 3 * 9


def test_custom_kinds_validate_against_the_shared_crd_schemas(resources):
    schemas = crd_schemas()
    checked = 0
    for overlay in OVERLAYS:
        for resource in resources[overlay]:
            if not is_custom(resource):
                continue
            key = (resource["apiVersion"], resource["kind"])
            assert key in schemas, f"{overlay}: no CRD in {CRDS} serves {key} (Strimzi: kafka.strimzi.io/v1)"
            errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(resource), key=str)
            assert not errors, f"{overlay}: {key[1]} {resource['metadata']['name']}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
            )
            checked += 1
    assert checked >= 3 * 4 + 9


def test_the_crd_check_refuses_an_old_strimzi_field():
    """The strict schema is what catches v1beta2-era manifests: `spec.topicName` is fine, a made-up
    field is not."""
    schema = crd_schemas()[("kafka.strimzi.io/v1", "KafkaTopic")]
    topic = {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic", "metadata": {"name": "t"}, "spec": {}}
    assert jsonschema.Draft7Validator(schema).is_valid({**topic, "spec": {"partitions": 3}})
    assert not jsonschema.Draft7Validator(schema).is_valid({**topic, "spec": {"partition": 3}})


# Folders an operator may render (or a scanner may find) on their own, outside an overlay.
COMPONENTS = ("grafana", "prometheus")


@pytest.fixture(scope="session")
def components() -> dict[str, str]:
    """deploy/grafana and deploy/prometheus, each rendered on its own by kustomize."""
    command = kustomize_command()
    out = {}
    for component in COMPONENTS:
        result = run([*command, str(DEPLOY / component)])
        assert result.returncode == 0, f"kustomize could not render deploy/{component}:\n{result.stderr}"
        out[component] = result.stdout
    return out


def test_components_rendered_on_their_own_use_the_streamrec_namespace(components):
    for component, text in components.items():
        for resource in (doc for doc in yaml.safe_load_all(text) if doc):
            where = f"deploy/{component}: {resource['kind']} {resource['metadata']['name']}"
            assert resource["metadata"].get("namespace") == "streamrec", f"{where} has no namespace streamrec"


def test_checkov_passes_every_rendered_overlay_and_the_dockerfile(rendered, components, tmp_path):
    """One checkov run over the three rendered overlays, the dashboard and alert folders rendered
    on their own, and the Dockerfile: no failed check, and every skipped check carries its reason
    inline."""
    checkov = checkov_path()
    for overlay, text in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(text)
    for component, text in components.items():
        (tmp_path / f"component-{component}.yaml").write_text(text)
    (tmp_path / "Dockerfile").write_text((DEPLOY / "image" / "Dockerfile").read_text())
    result = run(
        # --skip-download: nothing fetched from checkov's vendor (no network in CI, no calls home)
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile", "-o", "json", "--skip-download"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOG_LEVEL": "WARNING"},
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, result.stdout[:2000]
    for report in reports:
        failed = report["results"]["failed_checks"]
        assert not failed, "checkov failed: " + "; ".join(
            f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in failed
        )
        assert report["summary"]["passed"] > 0
        for skipped in report["results"]["skipped_checks"]:
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason) > 20, f"checkov skip {skipped['check_id']} on {skipped['resource']} has no reason"


# --- what docs/operations/kubernetes.md promises about the manifests -----------------------


# The workers are a StatefulSet (stable pod names = static group membership ids), the trainer a Deployment.
KINDS = {"streamrec-worker": "StatefulSet", "streamrec-trainer": "Deployment"}


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_pod_security_restricted_with_a_read_only_root(find, overlay):
    for name, port in (("streamrec-worker", 9464), ("streamrec-trainer", 9465)):
        deployment = find(overlay, KINDS[name], name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "the writable /tmp must be an emptyDir"
        assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]) & set(c["resources"]["requests"])
    namespace = find(overlay, "Namespace", "streamrec")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_is_a_static_member_named_after_its_pod_and_the_name_survives_a_rollout(find, overlay):
    workers = find(overlay, "StatefulSet", "streamrec-worker")
    for c in (container(workers), workers["spec"]["template"]["spec"]["initContainers"][0]):
        env = {e["name"]: e for e in c["env"]}
        assert env["STREAMREC_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # A StatefulSet's pod is replaced under the same name: it takes its own partitions back.
    assert workers["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert workers["spec"]["podManagementPolicy"] == "Parallel"
    governing = find(overlay, "Service", workers["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_streamrec_variable_is_a_setting_and_passwords_come_from_secrets(find, resources, overlay):
    """The application refuses unknown STREAMREC_ variables at start-up: a typo here is a crash loop."""
    known = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
    pending = PENDING_SETTINGS - known
    settings_maps = [r for r in resources[overlay] if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith(
        "streamrec-settings")]  # fmt: skip
    assert len(settings_maps) == 1
    names = set(settings_maps[0]["data"])
    for name in ("streamrec-worker", "streamrec-trainer"):
        c = container(find(overlay, KINDS[name], name))
        names |= {e["name"] for e in c["env"] if e["name"].startswith("STREAMREC_")}
        assert c["envFrom"] == [{"configMapRef": {"name": settings_maps[0]["metadata"]["name"]}}]
        password = next(e for e in c["env"] if e["name"] == "KAFKA_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": name, "key": "password"}
        options = next(e for e in c["env"] if e["name"] == "STREAMREC_KAFKA_OPTIONS")["value"]
        parsed = json.loads(options.replace("$(KAFKA_USERNAME)", "u").replace("$(KAFKA_PASSWORD)", "p"))
        assert parsed["sasl.mechanism"] == "SCRAM-SHA-512" and parsed["sasl.password"] == "p"
    assert names - known <= pending, f"not settings: {sorted(names - known - pending)}"
    data = settings_maps[0]["data"]
    assert data["STREAMREC_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")


def test_the_gpu_overlay_asks_for_a_gpu_and_tolerates_gpu_nodes(find):
    for name in ("streamrec-worker", "streamrec-trainer"):
        deployment = find("gpu", KINDS[name], name)
        assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container(deployment)["image"].endswith("-cuda")
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        assert "nvidia.com/gpu" not in container(find("cpu", KINDS[name], name))["resources"]["limits"]


def test_keda_scales_on_the_worker_groups_lag_up_to_one_worker_per_partition(find, resources):
    default_partitions = Settings.model_fields["topic_partitions"].default
    for overlay in OVERLAYS:
        scaled = find(overlay, "ScaledObject", "streamrec-worker")
        assert scaled["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": "streamrec-worker",
        }
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == Settings.model_fields["group_id"].default
        assert trigger["metadata"]["topic"] == "user-events"
        assert trigger["metadata"]["allowIdleConsumers"] == "false"
        auth = find(overlay, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert {"sasl", "username", "password", "tls", "ca"} == {
            ref["parameter"] for ref in auth["spec"]["secretTargetRef"] + auth["spec"]["configMapTargetRef"]
        }
        topics = {r["metadata"]["name"]: r for r in resources[overlay] if r["kind"] == "KafkaTopic"}
        partitions = topics["user-events"]["spec"]["partitions"] if topics else default_partitions
        assert scaled["spec"]["maxReplicaCount"] == partitions, f"{overlay}: maxReplicaCount must equal partitions"


def test_strimzi_topics_have_the_right_partitions_and_compaction(find):
    topic = lambda name: find("strimzi", "KafkaTopic", name)["spec"]  # noqa: E731
    assert topic("user-state")["partitions"] == topic("user-events")["partitions"]
    for name in ("recommendations", "user-state", "model-checkpoints"):
        assert topic(name)["config"]["cleanup.policy"] == "compact", name
    for name in ("user-events", "user-events.dlq", "model-updates"):
        assert topic(name)["config"].get("cleanup.policy", "delete") == "delete", name


def test_strimzi_users_are_scram_with_least_privilege(find):
    def acls(user: str) -> dict[tuple[str, str], set[str]]:
        spec = find("strimzi", "KafkaUser", user)["spec"]
        assert spec["authentication"] == {"type": "scram-sha-512"}
        acls = spec["authorization"]["acls"]
        return {(a["resource"]["type"], a["resource"]["name"]): set(a["operations"]) for a in acls}

    worker, trainer, keda = acls("streamrec-worker"), acls("streamrec-trainer"), acls("streamrec-keda")
    everything = [op for user in (worker, trainer, keda) for ops in user.values() for op in ops]
    assert "All" not in everything and not any(t == "cluster" for u in (worker, trainer, keda) for t, _ in u)
    assert worker[("topic", "user-events")] == {"Read", "Describe"}  # consumes, never writes its input
    assert "Write" not in worker[("topic", "model-updates")]  # only the trainer may announce models
    assert "Write" in trainer[("topic", "model-updates")] and "Write" in trainer[("topic", "model-checkpoints")]
    assert ("topic", "recommendations") not in trainer
    assert all(ops == {"Describe"} for ops in keda.values())  # KEDA only reads offsets


def test_the_dashboard_is_provisioned_for_grafanas_sidecar(find):
    for overlay in OVERLAYS:
        config_map = find(overlay, "ConfigMap", "streamrec-dashboard")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(config_map["data"]["streamrec.json"]) == json.loads(
            (DEPLOY / "grafana" / "streamrec.json").read_text()
        )


def test_the_prometheus_rule_and_service_monitor_are_in_every_overlay(find):
    for overlay in OVERLAYS:
        rule = find(overlay, "PrometheusRule", "streamrec")
        assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "prometheusrule.yaml").read_text())["spec"]
        monitor = find(overlay, "ServiceMonitor", "streamrec")
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_the_image_runs_as_non_root_and_the_build_context_leaves_secrets_and_caches_out():
    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and dockerfile.count("FROM ") >= 2
    patterns = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert patterns[0] == "*", "the build context starts from nothing and lets in only what the image needs"
    assert not {p for p in patterns if p.startswith("!")} - {
        "!pyproject.toml",
        "!README.md",
        "!LICENSE",
        "!stream_worker/",
        "!models/",
        "!schemas/",
        "!deploy/kafka/",
    }
    assert "uv build --wheel" in dockerfile and "PYTHONPATH" not in dockerfile, "the image installs the wheel"
