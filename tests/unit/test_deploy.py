"""deploy/ is checked here, since no container engine runs in CI: the files parse, every variable is a
real setting with a valid value, image/commands/arguments match the CLI and the package, references
between objects resolve, the NATS cluster has three routed nodes, the collector pipelines use
components that exist."""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from legato.cli.main import build_parser
from legato.config.settings import Settings, load_settings
from legato.executor.__main__ import parse_args as executor_args

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SERVICE_COMMANDS = {"trigger", "scheduler", "executor", "signal-router"}
LEGATO_VARS = {f"LEGATO_{name.upper()}" for name in Settings.__struct_fields__}
# Read by the executor only (legato.executor.secret_store, connection_store, artifacts, s3_store,
# container_runtime, step_env), not Settings.
LEGATO_VARS |= {
    "LEGATO_SECRETS_DIR",
    "LEGATO_CONNECTIONS_DIR",
    "LEGATO_ARTIFACTS_DIR",
    "LEGATO_ARTIFACTS_STORE",
    "LEGATO_STEP_ENV_PASSTHROUGH",
    "LEGATO_CONTAINER_RUNTIME",
    "LEGATO_CONTAINER_EXTRA_ARGS",
    "LEGATO_CONTAINER_MOUNT_ROOTS",
}
LEGATO_VARS |= {
    f"LEGATO_ARTIFACTS_S3_{name}{suffix}"
    for name in ("BUCKET", "PREFIX", "ENDPOINT", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
    for suffix in ("", "_FILE")
    if suffix == "" or name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
}
OTEL_VARS = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in k8s_objects() if o["kind"] == kind}


def generated(kind: str) -> dict[str, set[str]]:
    """Secrets/ConfigMaps kustomize generates from deploy/secrets/ (made by make-secrets.sh): name -> keys."""
    section = {"Secret": "secretGenerator", "ConfigMap": "configMapGenerator"}[kind]
    out: dict[str, set[str]] = {}
    for gen in load(K8S / "kustomization.yaml").get(section, []):
        out[gen["metadata"]["name"] if "metadata" in gen else gen["name"]] = {
            f.split("=")[0] if "=" in f else Path(f).name for f in gen["files"]
        }
    return out


def generator_files() -> list[str]:
    kustomization = load(K8S / "kustomization.yaml")
    return [
        f.split("=")[-1]
        for section in ("secretGenerator", "configMapGenerator")
        for gen in kustomization.get(section, [])
        for f in gen["files"]
    ]


def seed_of(command: str) -> str:
    """The identity a service connects as (its nkey seed file's name)."""
    return command.replace("-", "_")


def legato_image() -> str:
    return str(load(DEPLOY / "compose.yaml")["services"]["trigger"]["image"])


def check_settings(env: dict[str, str], where: str) -> Settings:
    """Every LEGATO_ variable is a setting and the whole environment loads; OTEL_ ones are standard."""
    for var in env:
        if var.startswith("LEGATO_"):
            assert var in LEGATO_VARS, f"{where}: {var} is not a Legato setting"
        elif var.startswith("OTEL_"):
            assert var in OTEL_VARS, f"{where}: {var} is not an OTEL variable Legato documents"
    return load_settings({k: str(v) for k, v in env.items()}, use_dev_state=False)


def check_service_args(args: list[str], where: str) -> None:
    assert args, f"{where}: no command"
    name, rest = args[0], args[1:]
    if name == "--help":
        return
    assert name in SERVICE_COMMANDS, f"{where}: {name!r} is not a legato service command"
    if name == "executor":
        parsed = executor_args(rest)
        assert parsed.concurrency >= 1 and parsed.queue
    else:
        assert rest == [], f"{where}: {name} takes its settings from the environment, got {rest}"


def check_collector(config: dict[str, Any], where: str, hosts: set[str]) -> None:
    service = config["service"]
    for ext in service.get("extensions", []):
        assert ext in (config.get("extensions") or {}), f"{where}: extension {ext} not defined"
    pipelines = service["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipe in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for comp in pipe.get(section, []):
                assert comp in (config.get(section) or {}), (
                    f"{where}: {name} uses undefined {section[:-1]} {comp}"
                )
        assert pipe["receivers"] and pipe["exporters"], f"{where}: pipeline {name} is incomplete"
    assert "otlp" in pipelines["traces"]["receivers"]
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc.endswith(":4317")
    jaeger = config["exporters"]["otlp/jaeger"]["endpoint"]
    assert jaeger.split(":")[0] in hosts, f"{where}: traces go to {jaeger}, which is not defined"
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]


# ------------------------------------------------------------------------------------------- image


def test_dockerfile_installs_the_package_and_runs_legato() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["legato"] == "legato.cli.main:main"
    assert re.search(r'^ENTRYPOINT \["legato"\]$', text, re.M)
    for copied in ("pyproject.toml", "libs", "services"):
        assert re.search(rf"^COPY {copied}\b", text, re.M), copied
        assert (ROOT / copied).exists()
    assert "pip wheel" in text and "pip install" in text
    assert re.search(r"^EXPOSE 9464 8765$", text, re.M)
    assert "'.[s3,web]'" in text  # the image can run the web console and store artifacts in S3
    assert re.search(r"^USER legato$", text, re.M)


# ----------------------------------------------------------------------------------------- compose


def test_compose_references_resolve() -> None:
    compose = load(DEPLOY / "compose.yaml")
    services, networks, volumes = compose["services"], compose["networks"], compose["volumes"]
    for name, svc in services.items():
        for net in svc.get("networks", []):
            assert net in networks, f"{name}: network {net} not defined"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} not defined"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name}: depends on unknown service {dep}"
        for ref in svc.get("secrets", []):
            source = ref["source"] if isinstance(ref, dict) else ref
            assert source in compose["secrets"], f"{name}: secret {source} not defined"
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / "pyproject.toml").exists() and (context / build["dockerfile"]).exists()


def test_compose_legato_services_use_one_image_real_commands_and_real_settings() -> None:
    compose = load(DEPLOY / "compose.yaml")
    legato = {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("legato:")}
    assert {s["command"][0] for s in legato.values()} >= SERVICE_COMMANDS
    assert "${LEGATO_DB_PASSWORD:?" in compose["x-legato-env"]["LEGATO_DATABASE_URL"]
    assert len({s["image"] for s in legato.values()}) == 1
    replica_ids = []
    for name, svc in legato.items():
        check_service_args(list(svc["command"]), f"compose {name}")
        settings = check_settings(svc["environment"], f"compose {name}")
        env = svc["environment"]
        assert settings.stream_replicas == 3 and settings.partitions == 16, name
        assert settings.metrics_port != 0
        assert str(settings.metrics_port) in svc["expose"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert [u.split("//")[1].split(":")[0] for u in settings.nats_url.split(",")] == [
            "nats-1",
            "nats-2",
            "nats-3",
        ]
        if svc["command"][0] == "executor":
            # Stateless: never handed the database (nor made to wait for it).
            assert "LEGATO_DATABASE_URL" not in env and "postgres" not in svc["depends_on"], name
        else:
            assert settings.database_url.split("@")[1].startswith("postgres:5432/")
        if svc["command"][0] == "scheduler":
            replica_ids.append(settings.replica_id)
        # Authenticated, least privilege: each container gets its own role's seed as /run/secrets/nkey.
        assert settings.nats_url.startswith("tls://") and settings.nats_tls_cert and settings.auth_users
        [nkey] = [r for r in svc["secrets"] if isinstance(r, dict) and r["target"] == "nkey"]
        role = "admin" if svc["command"][0] == "--help" else seed_of(svc["command"][0])
        assert nkey["source"] == f"{role}-nkey", name
        assert compose["secrets"][nkey["source"]]["file"] == f"./secrets/keys/{role}.nk", name
        assert settings.nats_creds == "/run/secrets/nkey"
    assert len(replica_ids) >= 2 and all(replica_ids) and len(set(replica_ids)) == len(replica_ids)
    for name in ("trigger", "executor", "signal-router"):
        assert legato[name]["deploy"]["replicas"] >= 2, name


def test_compose_nats_is_a_three_node_jetstream_cluster() -> None:
    services = load(DEPLOY / "compose.yaml")["services"]
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    names = set()
    for svc in nodes.values():
        flags = dict(f.lstrip("-").partition("=")[::2] for f in svc["command"])
        assert "jetstream" in flags and flags["store_dir"]
        names.add(flags["name"])
        routes = flags["routes"].split(",")
        assert sorted(r.split("//")[1] for r in routes) == ["nats-1:6222", "nats-2:6222", "nats-3:6222"]
        assert flags["cluster"].endswith(":6222") and flags["cluster_name"] == "legato"
        assert any(m.endswith(":/data") for m in svc["volumes"]) and flags["store_dir"] == "/data"
        # Auth (the generated authorization block) and TLS with verified client certificates.
        assert flags["config"] == "/run/secrets/nats-auth" and "tlsverify" in flags and "tls" in flags
        for secret in ("nats-auth", "nats-cert", "nats-key", "tls-ca"):
            assert secret in svc["secrets"]
    assert names == set(nodes)


def test_compose_collector_and_jaeger() -> None:
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    check_collector(load(DEPLOY / "otel-collector.yaml"), "otel-collector.yaml", set(services))
    assert any(p.startswith("16686:") for p in services["jaeger"]["ports"])
    mount = services["otel-collector"]["volumes"][0].split(":")
    assert mount[0] == "./otel-collector.yaml"
    assert any(a.endswith(mount[1]) for a in services["otel-collector"]["command"])


# --------------------------------------------------------------------------------------- kubernetes


def test_every_k8s_object_is_well_formed_and_listed() -> None:
    objects = k8s_objects()
    assert objects
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), path
        assert obj["metadata"].get("name"), path
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "legato", f"{path}: {obj['metadata']['name']}"
    kustomization = load(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in objects}
    assert len(kinds) == len(objects), "duplicate object"


def workloads() -> list[dict[str, Any]]:
    return [o for _, o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def test_k8s_selectors_services_and_references_resolve() -> None:
    services = by_kind("Service")
    configmaps = {
        **{n: set(c.get("data", {})) for n, c in by_kind("ConfigMap").items()},
        **generated("ConfigMap"),
    }
    secrets = {
        **{n: set(c.get("stringData", {})) for n, c in by_kind("Secret").items()},
        **generated("Secret"),
    }
    for w in workloads():
        name = f"{w['kind']} {w['metadata']['name']}"
        labels = w["spec"]["template"]["metadata"]["labels"]
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{name}: selector does not match its pods"
        if w["kind"] == "StatefulSet":
            svc = services[w["spec"]["serviceName"]]
            assert svc["spec"].get("clusterIP") == "None", f"{name}: serviceName must be headless"
        pod = w["spec"]["template"]["spec"]
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, name
            if "secret" in vol:
                if vol["secret"].get("optional"):
                    continue  # created by the operator, not by kustomize (deploy/README.md)
                keys = secrets[vol["secret"]["secretName"]]
                for item in vol["secret"].get("items", []):
                    assert item["key"] in keys, f"{name}: {item['key']} not in {vol['secret']['secretName']}"
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps, name
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets, name
            for env in c.get("env", []):
                key_ref = env.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["key"] in secrets[key_ref["name"]], name
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in claims | {v["name"] for v in pod.get("volumes", [])}, name
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                target = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("tcpSocket")
                if target and isinstance(target["port"], str):
                    assert target["port"] in ports, f"{name}: {probe} port {target['port']}"
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads()]
    for name, svc in services.items():
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), f"Service {name} selects nothing"


def test_k8s_legato_workloads_match_the_image_cli_and_settings() -> None:
    config = by_kind("ConfigMap")["legato-config"]["data"]
    assert by_kind("Secret") == {}, "secrets are generated from deploy/secrets/, never kept here"
    assert {"LEGATO_DATABASE_URL", "POSTGRES_PASSWORD"} <= generated("Secret")["legato-secrets"]
    legato = [w for w in workloads() if w["metadata"]["labels"].get("app.kubernetes.io/name") == "legato"]
    commands = {}
    for w in legato:
        [c] = w["spec"]["template"]["spec"]["containers"]
        name = w["metadata"]["name"]
        assert c["image"] == legato_image(), name
        assert "command" not in c, f"{name}: the image's entrypoint is legato; give args"
        check_service_args(c["args"], f"k8s {name}")
        commands[c["args"][0]] = w
        env = dict(config)
        env.update({e["name"]: e.get("value", "from-field") for e in c.get("env", [])})
        if c["args"][0] == "executor":
            # Stateless: no database secret, no database variable.
            assert not [r for r in c.get("envFrom", []) if "secretRef" in r], name
            assert "LEGATO_DATABASE_URL" not in env and "legato-secrets" not in str(c), name
        else:
            env["LEGATO_DATABASE_URL"] = "postgresql://legato:from-secret@postgres-0.postgres:5432/legato"
        settings = check_settings(env, f"k8s {name}")
        # Its own seed only, and the users file and TLS files where the settings say.
        seed = seed_of(c["args"][0])
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert settings.nats_creds == f"{mounts['nkey']}/{seed}.nk", name
        assert volumes["nkey"]["secret"]["items"] == [{"key": f"{seed}.nk", "path": f"{seed}.nk"}], name
        assert settings.auth_users == f"{mounts['users']}/users.json"
        assert volumes["users"]["configMap"]["name"] == "legato-users"
        for path in (settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key):
            assert (
                Path(path).parent == Path(mounts["tls"])
                and Path(path).name in generated("Secret")["legato-tls"]
            )
        assert settings.stream_replicas == 3 and settings.partitions == 16
        # Probes use the service's own health endpoint (served beside /metrics).
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        metrics_ports = [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"]
        assert metrics_ports == [settings.metrics_port], name
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.metrics_port)
        grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > settings.grace_period, f"{name}: pods must outlive LEGATO_GRACE_PERIOD"
    assert set(commands) == SERVICE_COMMANDS
    scheduler = commands["scheduler"]
    assert scheduler["kind"] == "StatefulSet" and scheduler["spec"]["replicas"] >= 2
    [c] = scheduler["spec"]["template"]["spec"]["containers"]
    [replica] = [e for e in c["env"] if e["name"] == "LEGATO_REPLICA_ID"]
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for svc in ("trigger", "executor", "signal-router"):
        assert commands[svc]["kind"] == "Deployment"


@pytest.mark.parametrize(
    ("variable", "secret"),
    [("LEGATO_SECRETS_DIR", "legato-step-secrets"), ("LEGATO_CONNECTIONS_DIR", "legato-connections")],
)
def test_k8s_step_secrets_and_connections_reach_the_executor_only_as_files(
    variable: str, secret: str
) -> None:
    deployments = by_kind("Deployment")
    [c] = deployments["executor"]["spec"]["template"]["spec"]["containers"]
    [folder] = [e["value"] for e in c["env"] if e["name"] == variable]
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    [volume] = [
        v
        for v in deployments["executor"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    ]
    assert volume["secret"]["secretName"] == secret
    for w in workloads():
        if w["metadata"]["name"] != "executor":
            assert secret not in str(w), w["metadata"]["name"]


def test_k8s_nats_cluster_routes_three_nodes_with_jetstream() -> None:
    conf = by_kind("ConfigMap")["nats-config"]["data"]["nats.conf"]
    nats = by_kind("StatefulSet")["nats"]
    replicas, headless = nats["spec"]["replicas"], nats["spec"]["serviceName"]
    assert replicas == 3
    routes = re.findall(r"nats://([a-z0-9.-]+):(\d+)", conf.split("routes", 1)[1])
    assert sorted(routes) == [(f"nats-{i}.{headless}.legato.svc.cluster.local", "6222") for i in range(3)]
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
    assert "server_name: $POD_NAME" in conf
    [c] = nats["spec"]["template"]["spec"]["containers"]
    assert any(e["name"] == "POD_NAME" for e in c["env"])
    assert c["args"] == ["--config", "/etc/nats/nats.conf"]
    assert any(m["mountPath"] == "/etc/nats" for m in c["volumeMounts"])
    # nkey users from the generated block, TLS with verified client certificates.
    assert "include ./auth/auth.conf" in conf
    assert re.search(r"tls\s*\{[^}]*verify:\s*true", conf)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["auth"] == "/etc/nats/auth" and mounts["tls"] == "/etc/nats/tls"
    for key in ("tls.crt", "tls.key", "ca.crt"):
        assert f"/etc/nats/tls/{key}" in conf and key in generated("Secret")["nats-tls"]
    assert all(
        u.startswith("tls://")
        for u in by_kind("ConfigMap")["legato-config"]["data"]["LEGATO_NATS_URL"].split(",")
    )
    # Services and the CLI reach all three nodes.
    urls = by_kind("ConfigMap")["legato-config"]["data"]["LEGATO_NATS_URL"].split(",")
    assert [u.split("//")[1] for u in urls] == [
        f"nats-{i}.{headless}.legato.svc.cluster.local:4222" for i in range(3)
    ]


def test_k8s_collector_pipeline_and_endpoints() -> None:
    services = by_kind("Service")
    collector = yaml.safe_load(by_kind("ConfigMap")["otel-collector-config"]["data"]["config.yaml"])
    hosts = {f"{n}.legato.svc.cluster.local" for n in services}
    check_collector(collector, "k8s collector", hosts)
    endpoint = by_kind("ConfigMap")["legato-config"]["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = endpoint.split("//")[1].split(":")
    assert host == "otel-collector.legato.svc.cluster.local"
    assert int(port) in {p["port"] for p in services["otel-collector"]["spec"]["ports"]}
    assert 16686 in {p["port"] for p in services["jaeger"]["spec"]["ports"]}
    [c] = by_kind("Deployment")["otel-collector"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--config=/etc/otelcol-contrib/config.yaml"]


def test_no_secret_is_kept_in_deploy_and_make_secrets_makes_every_one() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(DEPLOY).parts:
            text = path.read_text(errors="replace")
            assert "change-me" not in text and "legato:legato@" not in text, path
            assert "POSTGRES_PASSWORD: " not in text, path
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()
    script = (DEPLOY / "make-secrets.sh").read_text()
    from legato.security.keyring import DEFAULT_IDENTITIES

    made = {f"keys/{name}.nk" for name, _ in DEFAULT_IDENTITIES} | {"keys/users.json"}
    for f in generator_files():
        rel = f.removeprefix("../secrets/")
        assert rel in made or Path(rel).name.split(".")[0] in script or rel in script, rel
    compose = load(DEPLOY / "compose.yaml")
    for name, secret in compose["secrets"].items():
        rel = secret["file"].removeprefix("./secrets/")
        assert rel in made or rel in script or Path(rel).stem in script, name


def test_generated_authorization_block_is_valid_nats_server_config(tmp_path: Path) -> None:
    import subprocess

    from legato.devstack import find_nats_server
    from legato.security.keyring import Keyring
    from legato.security.permissions import authorization_block

    ring = Keyring(tmp_path / "keys").ensure()
    (tmp_path / "auth.conf").write_text(authorization_block(ring.users()))
    (tmp_path / "nats.conf").write_text("listen: 127.0.0.1:-1\ninclude ./auth.conf\n")
    done = subprocess.run(
        [find_nats_server(), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ cluster resilience


def containers_of(w: dict[str, Any]) -> list[dict[str, Any]]:
    pod = w["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    assert workloads()
    for w in workloads():
        for c in containers_of(w):
            where = f"{w['kind']} {w['metadata']['name']}/{c['name']}"
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind) or {}), f"{where}: no cpu/memory {kind}"


def pdb_pods(pdb: dict[str, Any]) -> list[dict[str, Any]]:
    """The workloads whose pods the budget's selector matches (matchLabels only, as in deploy/)."""
    sel = pdb["spec"]["selector"]
    assert set(sel) == {"matchLabels"}, f"PDB {pdb['metadata']['name']}: only matchLabels is cross-checked"
    return [
        w
        for w in workloads()
        if sel["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_disruption_budgets_select_real_pods_and_keep_the_nats_quorum() -> None:
    pdbs = by_kind("PodDisruptionBudget")
    covered: dict[str, dict[str, Any]] = {}
    for name, pdb in pdbs.items():
        selected = pdb_pods(pdb)
        assert len(selected) == 1, f"PDB {name} selects {[w['metadata']['name'] for w in selected]}"
        covered[selected[0]["metadata"]["name"]] = pdb["spec"]
    nats = by_kind("StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    # A JetStream R3 stream needs 2 of 3 nodes for a quorum: a drain may take one node, never two.
    assert covered["nats"] == {"minAvailable": 2, "selector": covered["nats"]["selector"]}
    for service in SERVICE_COMMANDS:
        assert covered[service].get("maxUnavailable") == 1, f"{service}: no maxUnavailable 1 budget"


@pytest.mark.parametrize("workload", ["nats", "scheduler"])
def test_nats_and_schedulers_spread_over_nodes(workload: str) -> None:
    w = by_kind("StatefulSet")[workload]
    labels = w["spec"]["template"]["metadata"]["labels"]
    anti = w["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
    terms = [
        *anti.get("requiredDuringSchedulingIgnoredDuringExecution", []),
        *(t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])),
    ]
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and t["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    ), f"{workload}: no pod anti-affinity by host over its own pods"


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """kubernetes-validate ships the schemas in its wheel: no network at run time."""
    import kubernetes_validate

    for path, obj in k8s_objects():
        try:
            kubernetes_validate.validate(obj, "1.31.0", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path}: {obj['kind']} {obj['metadata']['name']}: {e}")
    bad = dict(by_kind("PodDisruptionBudget")["nats"])
    bad["spec"] = {**bad["spec"], "minAvailabel": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.31.0", strict=True)


def test_database_urls_require_verified_tls() -> None:
    script = (DEPLOY / "make-secrets.sh").read_text()
    assert "sslmode=verify-full&sslrootcert=" in script
    compose_url = load(DEPLOY / "compose.yaml")["x-legato-env"]["LEGATO_DATABASE_URL"]
    query = dict(q.split("=", 1) for q in compose_url.rsplit("?", 1)[1].split("&"))
    assert query["sslmode"] == "verify-full"
    assert query["sslrootcert"] == "/run/secrets/tls-ca"
    # The Legato pods mount the CA the URL names (make-secrets.sh's default LEGATO_DB_ROOTCERT).
    default_root = re.search(r"LEGATO_DB_ROOTCERT:-([^}]+)}", script)
    assert default_root is not None
    for w in workloads():
        for c in containers_of(w):
            if any(e["name"] == "LEGATO_DATABASE_URL" for e in c.get("env", [])):
                mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
                assert Path(default_root.group(1)).parent == Path(mounts["tls"]), w["metadata"]["name"]
    pg = by_kind("StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert "ssl=on" in pg["args"]


def test_make_secrets_database_url_connects_only_with_verified_tls(tmp_path: Path) -> None:
    """make-secrets.sh end to end: its Postgres certificate and its URL give a verified TLS session."""
    import asyncio
    import os
    import subprocess
    import sys
    from urllib.parse import parse_qs, urlsplit

    import asyncpg

    from legato.devstack import EmbeddedPostgres

    bin_dir = next(
        (
            b
            for b in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
            if "libssl" in subprocess.run(["ldd", str(b / "postgres")], capture_output=True, text=True).stdout
        ),
        None,
    )
    if bin_dir is None:
        pytest.skip("no PostgreSQL build with SSL on this machine (the embedded one has none)")
    (tmp_path / "deploy").mkdir()
    shutil.copy(DEPLOY / "make-secrets.sh", tmp_path / "deploy")
    out = tmp_path / "deploy" / "secrets"
    env = {
        **os.environ,
        "LEGATO_PYTHON": sys.executable,
        "LEGATO_DB_HOST": "localhost",
        "LEGATO_DB_ROOTCERT": str(out / "tls" / "ca.crt"),
    }
    subprocess.run(["bash", str(tmp_path / "deploy" / "make-secrets.sh")], env=env, check=True, timeout=120)
    parts = urlsplit((out / "database-url").read_text())
    assert parts.hostname == "localhost"
    assert parse_qs(parts.query) == {"sslmode": ["verify-full"], "sslrootcert": [str(out / "tls" / "ca.crt")]}
    root = tmp_path / "pg"
    root.mkdir()
    root.chmod(0o711)
    pg = EmbeddedPostgres(
        root / "data",
        preferred_port=0,
        durable=False,
        ssl=(str(out / "tls" / "postgres.crt"), str(out / "tls" / "postgres.key")),
        bin_dir=bin_dir,
    ).start()
    try:
        # The server's user and password are the embedded server's; host and TLS are the URL's.
        url = pg.url("postgres").replace("127.0.0.1", "localhost") + "?" + parts.query
        other_ca = tmp_path / "other-ca.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=other",
                "-keyout",
                str(tmp_path / "other.key"),
                "-out",
                str(other_ca),
            ],
            check=True,
            capture_output=True,
        )

        async def check() -> None:
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
            finally:
                await conn.close()
            # verify-full really verifies: a server certificate from another CA is refused.
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncpg.connect(url.replace(str(out / "tls" / "ca.crt"), str(other_ca)))

        import ssl

        asyncio.run(check())
    finally:
        pg.stop()


# --------------------------------------------------------------------------------------------- docs


@pytest.mark.parametrize("command", ["show RUN --trace", "instances", "workflow list"])
def test_readme_commands_exist(command: str) -> None:
    assert command.split()[0] in (DEPLOY / "README.md").read_text()
    build_parser().parse_args(shlex.split(command))
