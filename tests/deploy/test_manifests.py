"""deploy/ checked as a cluster would take it, and for the findings of its review.

The Kubernetes manifests are rendered by kustomize (kubectl's own: ``kubectl kustomize``), then
validated against Kubernetes' schemas (kubernetes-validate, strict: an unknown field is an error) and
KEDA's objects against the models generated from KEDA's CRDs (cloudcoil-models-keda; a field they
drop is an unknown one), and linted for security by checkov. The compose file is checked against
the compose spec (check-jsonschema's vendored copy), the Dockerfile by hadolint. The tests after
those check what the linters cannot know: grace periods against the actors' time limits, what KEDA
counts, which secret reaches which role, and how pods are confined.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

from dx.shared.messages import QUEUES
from dx.workers.broker import stop_timeout_ms

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
#: The kustomizations a cluster applies: the roles, and the migration Job run before them.
KUSTOMIZATIONS = (K8S, K8S / "migrate")
#: The oldest Kubernetes the manifests must suit, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
#: What each role's Secret holds (secret.example.yaml), by the command its container runs.
SECRET_KEYS = {
    "serve": {"DX_DATABASE_URL", "DX_BROKER_URL"},
    "scheduler": {"DX_DATABASE_URL", "DX_BROKER_URL", "DX_SMTP_URL"},
    "migrate": {"DX_DATABASE_URL"},
}
WORKER_SERVICE_KEYS = {"DX_DATABASE_URL", "DX_BROKER_URL", "DX_REDIS_URL", "DX_SMTP_URL"}
#: Ranges a tenant's connection must never reach through an egress rule open to the internet.
INTERNAL_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
CHECKOV = Path(sys.prefix) / "checkov" / "bin" / "checkov"


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: it renders the kustomizations (`kubectl kustomize`); install kubectl")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k` would send, from both kustomizations."""
    return [obj for folder in KUSTOMIZATIONS for obj in _kustomize(folder)]


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod spec) for each Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]["spec"]


def _role(pod: dict[str, Any]) -> str:
    """The dx command a pod runs: worker, scheduler, serve or migrate."""
    return str(pod["containers"][0]["args"][0])


def _queues(args: list[str]) -> tuple[str, ...]:
    """The queues ``dx worker ARGS`` consumes."""
    if "--queues" in args:
        return tuple(args[args.index("--queues") + 1].split(","))
    return QUEUES


def _config_map(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    return next(o["data"] for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)


def _environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's plain environment: its ConfigMaps' entries, then its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_config_map(objects, source["configMapRef"]["name"]))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _example_secrets() -> dict[str, set[str]]:
    docs = yaml.safe_load_all((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    return {d["metadata"]["name"]: set(d.get("stringData", {}) | d.get("data", {})) for d in docs if d}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and In expressions, as the manifests use) matches these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", f"this test reads only In expressions: {expr}"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _duration_s(text: str) -> float:
    """A compose duration ("62m", "1h2m30s", "90s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[u] for n, u in parts)


# --- the objects are what their kinds allow -------------------------------------------------------

def test_every_object_is_valid_kubernetes(rendered):
    # Given the rendered objects other than KEDA's / When each is validated strictly for each version
    problems = []
    for obj in (o for o in rendered if not o["apiVersion"].startswith("keda.sh/")):
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                problems.append(f"{obj['kind']} {obj['metadata']['name']} ({version}): {exc}")
    # Then none is refused, and each kind the deployment needs is there
    assert problems == []
    kinds = {o["kind"] for o in rendered}
    assert {"Deployment", "Job", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def _keda_problems(obj: dict[str, Any]) -> list[str]:
    """Why KEDA's CRD schema would refuse ``obj``, or prune a field of it (an unknown field)."""
    model = getattr(keda, obj["kind"], None)
    if model is None:
        return [f"{obj['kind']} is not a KEDA kind"]
    try:
        parsed = model.model_validate(obj)
    except ValueError as exc:  # pydantic's ValidationError
        return [str(exc)]
    kept = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [] if kept == obj else [f"fields unknown to KEDA: kept {json.dumps(kept)}, given {json.dumps(obj)}"]


def test_keda_objects_match_kedas_schema(rendered):
    # Given KEDA's objects / When each is read by the models of KEDA's CRDs / Then nothing is refused or dropped
    objects = [o for o in rendered if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in objects} == {"ScaledObject", "TriggerAuthentication"}
    assert {o["metadata"]["name"]: _keda_problems(o) for o in objects} == {o["metadata"]["name"]: [] for o in objects}


def test_the_keda_check_catches_a_misspelt_field_and_a_wrong_type(rendered):
    # Given a ScaledObject with a misspelt field, and one with a word for a number
    scaled = next(o for o in rendered if o["kind"] == "ScaledObject")
    misspelt = {**scaled, "spec": {**scaled["spec"], "minReplicaCout": 1}}
    wrong_type = {**scaled, "spec": {**scaled["spec"], "pollingInterval": "often"}}
    # When checked / Then each is a problem
    assert _keda_problems(misspelt) and _keda_problems(wrong_type)


def test_checkov_finds_no_unexplained_risk(rendered, tmp_path):
    # Given the rendered manifests in a folder
    for i, folder in enumerate(KUSTOMIZATIONS):
        (tmp_path / f"{i}.yaml").write_text(yaml.safe_dump_all(_kustomize(folder)), encoding="utf-8")
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: scripts/bootstrap.sh installs checkov in a virtualenv of its own")
    # When checkov scans them, offline (--skip-download: no platform rules or metadata fetched)
    done = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download",
                           "--output", "json"], capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    # Then nothing failed, checks did run, and each skip (checkov.io/skipN annotation) says why
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert failed == [], done.stderr[-2000:]
    assert report["summary"]["passed"] > 100
    unexplained = [c["check_id"] for c in report["results"]["skipped_checks"]
                   if len((c.get("check_result") or {}).get("suppress_comment") or "") < 20]
    assert unexplained == []


def test_compose_file_follows_the_compose_spec():
    # Given deploy/compose.yaml / When checked against the compose spec / Then it conforms
    done = subprocess.run([str(Path(sys.executable).with_name("check-jsonschema")), "--builtin-schema",
                           "vendor.compose-spec", str(DEPLOY / "compose.yaml")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint():
    # Given deploy/Dockerfile and our hadolint settings (each ignored rule says why)
    config = Path(__file__).with_name("hadolint.yaml")
    # When hadolint lints it / Then it finds nothing
    done = subprocess.run([str(Path(sys.executable).with_name("hadolint")), "--no-color", "--config", str(config),
                           str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- workers stop without cutting work short, and scale on the work they hold ---------------------

def test_each_worker_pod_outlasts_the_time_limit_of_its_queues(rendered):
    # Given every pod that runs `dx worker`
    workers = [(w, pod) for w, pod in _pod_specs(rendered) if _role(pod) == "worker"]
    assert workers
    for workload, pod in workers:
        queues = _queues(pod["containers"][0]["args"])
        # When it is stopped / Then Kubernetes waits longer than dx worker waits for its longest message
        grace_s = pod.get("terminationGracePeriodSeconds", 30)
        assert grace_s * 1000 > stop_timeout_ms(queues), (workload["metadata"]["name"], queues, grace_s)
    # and every queue has its workers
    assert {q for _, pod in workers for q in _queues(pod["containers"][0]["args"])} == set(QUEUES)


def test_keda_counts_the_messages_workers_hold(rendered):
    # Given the worker Deployments and the ScaledObjects
    deployments = {w["metadata"]["name"]: _queues(pod["containers"][0]["args"])
                   for w, pod in _pod_specs(rendered) if _role(pod) == "worker"}
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in rendered if o["kind"] == "ScaledObject"}
    # Then each Deployment is scaled on exactly its own queues, through the management API (ready +
    # unacknowledged messages), not AMQP (ready ones only: a busy worker would look idle)
    assert set(scaled) == set(deployments)
    for name, queues in deployments.items():
        triggers = scaled[name]["spec"]["triggers"]
        assert sorted(t["metadata"]["queueName"] for t in triggers) == sorted(queues), name
        for t in triggers:
            assert t["type"] == "rabbitmq"
            assert t["metadata"]["protocol"] == "http" and t["metadata"]["mode"] == "QueueLength", (name, t)
            assert t["metadata"].get("excludeUnacknowledged", "false") == "false", (name, t)


def test_scale_down_waits_and_goes_gradually(rendered):
    # Given each ScaledObject / Then its HPA keeps pods 5 minutes after the queue shrinks, and removes them
    # by at most one pod or a quarter of them per period
    for obj in (o for o in rendered if o["kind"] == "ScaledObject"):
        behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        down = behavior.get("scaleDown", {})
        assert down.get("stabilizationWindowSeconds", 0) >= 300, obj["metadata"]["name"]
        assert down.get("policies"), obj["metadata"]["name"]
        for p in down["policies"]:
            assert (p["type"], p["value"]) in {("Pods", 1)} or (p["type"] == "Percent" and p["value"] <= 25), p


# --- secrets: files, and each role only its own ---------------------------------------------------

def test_no_pod_gets_a_secret_as_an_environment_variable(rendered):
    # Given every container / Then no secret reaches it through envFrom or env (they end up in
    # /proc/PID/environ, crash dumps and `kubectl describe`); they are mounted files instead
    for workload, pod in _pod_specs(rendered):
        for c in pod["containers"]:
            name = f"{workload['metadata']['name']}/{c['name']}"
            assert not [s for s in c.get("envFrom", []) if "secretRef" in s], name
            assert not [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})], name


def test_each_role_mounts_only_its_own_secret_holding_only_what_it_uses(rendered):
    # Given the Secrets' example and the pods
    secrets = _example_secrets()
    for workload, pod in _pod_specs(rendered):
        mounted = [v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v]
        # Then each pod mounts one Secret, its role's, and reads it as files through DX_SECRETS_DIR
        assert len(mounted) == 1, (workload["metadata"]["name"], mounted)
        keys = secrets[mounted[0]]
        role = _role(pod)
        if role == "worker":
            assert WORKER_SERVICE_KEYS <= keys and any(k.startswith("DX_SECRET_") for k in keys), keys
        else:  # the API gets no client password, no Redis, no SMTP
            assert keys == SECRET_KEYS[role], (role, keys)
        container = pod["containers"][0]
        mount = next(m["mountPath"] for m in container["volumeMounts"]
                     if m["name"] == next(v["name"] for v in pod["volumes"] if "secret" in v))
        assert _environment(rendered, container).get("DX_SECRETS_DIR") == mount, workload["metadata"]["name"]
    # and the tenants' secrets are in the workers' Secret only
    assert [n for n, keys in secrets.items() if any(k.startswith("DX_SECRET_") for k in keys)] == ["dx-worker-secrets"]


# --- pods are confined ----------------------------------------------------------------------------

def test_every_pod_is_locked_down(rendered):
    # Given every pod / Then: no service-account token, non-root under the runtime's seccomp profile, and
    # each container on a read-only root filesystem, without privilege escalation or any capability
    for workload, pod in _pod_specs(rendered):
        name = workload["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, name
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), name


def test_pods_write_only_to_their_own_empty_dirs(rendered):
    # Given every pod / Then /tmp and DX_HOME are emptyDirs of a bounded size, and no volume is shared:
    # no PersistentVolumeClaim (a ReadWriteMany one keeps workers Pending on most managed clusters)
    assert not [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    for workload, pod in _pod_specs(rendered):
        name = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert all(set(v) - {"name"} <= {"emptyDir", "secret", "configMap"} for v in volumes.values()), name
        for c in pod["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
            for path in ("/tmp", _environment(rendered, c).get("DX_HOME", "/var/lib/dx")):
                assert "sizeLimit" in mounts.get(path, {}).get("emptyDir", {}), (name, path)


def test_workers_share_staging_through_object_storage(rendered):
    # Given the worker pods, in several Deployments that share no folder / Then each reaches the same S3 staging
    for workload, pod in _pod_specs(rendered):
        if _role(pod) == "worker":
            env = _environment(rendered, pod["containers"][0])
            assert env.get("DX_STAGING_URL", "").startswith("s3://"), workload["metadata"]["name"]


def test_network_policies_deny_by_default_and_let_in_only_the_api(rendered):
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    # Given the policies / Then one denies everything to every pod
    assert [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
            {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    pods = {_role(pod): w["spec"]["template"]["metadata"]["labels"] for w, pod in _pod_specs(rendered)}
    for p in policies:
        spec = p["spec"]
        # and ingress reaches the API, or only the probe port from another namespace (Prometheus)
        for rule in spec.get("ingress", []):
            into = {role for role, labels in pods.items() if _selects(spec["podSelector"], labels)}
            if into != {"serve"}:
                assert "serve" not in into and [q["port"] for q in rule["ports"]] == [9191], p["metadata"]["name"]
                assert rule["from"] and all(set(f) == {"namespaceSelector"} for f in rule["from"])
        # and egress open to the internet never reaches the cluster's own ranges or the metadata address
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    assert INTERNAL_RANGES <= set(peer["ipBlock"].get("except", [])), p["metadata"]["name"]
            assert rule.get("ports"), f"{p['metadata']['name']}: an egress rule on every port"
    # and each role has its way out to PostgreSQL (5432)
    for role, labels in pods.items():
        ports = {q["port"] for p in policies if _selects(p["spec"]["podSelector"], labels)
                 for rule in p["spec"].get("egress", []) for q in rule["ports"]}
        assert 5432 in ports, role


def test_every_deployment_has_a_disruption_budget_and_replicas_spread(rendered):
    budgets = [o for o in rendered if o["kind"] == "PodDisruptionBudget"]
    for workload, pod in _pod_specs(rendered):
        if workload["kind"] != "Deployment":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        name = workload["metadata"]["name"]
        # Then a PodDisruptionBudget covers each Deployment's pods
        assert [b for b in budgets if _selects(b["spec"]["selector"], labels)], name
        # and the fixed replicas (API, scheduler) are spread over nodes
        if workload["spec"].get("replicas", 1) > 1:
            spread = [t for t in pod.get("topologySpreadConstraints", [])
                      if t["topologyKey"] == "kubernetes.io/hostname" and t["whenUnsatisfiable"] == "DoNotSchedule"]
            anti = pod.get("affinity", {}).get("podAntiAffinity")
            assert spread or anti, name


def test_images_are_pinned_by_digest(rendered):
    # Given every container / Then its image names a digest, not a tag that can be moved
    images = [c["image"] for _, pod in _pod_specs(rendered) for c in pod["containers"]]
    assert images and all(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", i) for i in images), images


def test_a_job_migrates_and_the_roles_do_not(rendered):
    # Given the workloads / Then one Job runs `dx migrate` with the schema owner's Secret and removes itself
    jobs = [(w, pod) for w, pod in _pod_specs(rendered) if _role(pod) == "migrate"]
    assert len(jobs) == 1 and jobs[0][0]["kind"] == "Job"
    assert jobs[0][0]["spec"].get("ttlSecondsAfterFinished"), "a finished Job is removed, so it can be applied again"
    # and every other role only checks the schema (its database user needs no DDL right)
    for workload, pod in _pod_specs(rendered):
        if _role(pod) != "migrate":
            env = _environment(rendered, pod["containers"][0])
            assert env.get("DX_MIGRATE_ON_START") == "false", workload["metadata"]["name"]


# --- the compose cluster ------------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8")))


def test_compose_workers_outlast_the_time_limit_of_their_queues():
    # Given each compose service running `dx worker` / Then compose waits longer than the worker does
    workers = {name: s for name, s in _compose()["services"].items() if (s.get("command") or [""])[0] == "worker"}
    assert workers
    for name, service in workers.items():
        grace_s = _duration_s(service.get("stop_grace_period", "10s"))
        assert grace_s * 1000 > stop_timeout_ms(_queues(service["command"])), (name, grace_s)


def test_compose_rabbitmq_lets_a_worker_hold_a_message_as_long_as_its_time_limit():
    # Given the compose RabbitMQ's configuration files / Then its consumer_timeout (30 min by default)
    # outlasts the longest time limit, or RabbitMQ takes a long plan back from its worker mid-run
    compose = _compose()
    files = [compose["configs"][c["source"]]["content"] for c in compose["services"]["rabbitmq"].get("configs", [])]
    timeouts = [int(m) for text in files for m in re.findall(r"^consumer_timeout\s*=\s*(\d+)\s*$", text, re.M)]
    assert timeouts and timeouts[-1] > stop_timeout_ms(QUEUES)
