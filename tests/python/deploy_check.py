"""Checks deploy/: every YAML document parses; core Kubernetes kinds validate against the Kubernetes
API schema (kubernetes-validate, strict: unknown fields are errors); kustomizations name files that
exist; each overlay's courier.toml parses and agrees with the manifests (ports, drain deadline) and
with the Strimzi resources (the region router's regions are the Kafka clusters, by their bootstrap
Service names and MirrorMaker 2 aliases; the replication policy and separator are MM2's; the probe
topic is not mirrored).

Usage: deploy_check.py DEPLOY_DIR. Prints one line per check; exits non-zero on the first failure."""

import pathlib
import re
import sys
import tomllib

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"durations here are whole seconds: {text!r}"
    return int(match.group(1))


def main(deploy):
    documents = {}
    for path in sorted(deploy.rglob("*.yaml")):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert docs, f"{path} holds no document"
        documents[path] = docs
        print(f"parsed {path.relative_to(deploy)}: {len(docs)} document(s)")

    validated = 0
    for path, docs in documents.items():
        for doc in docs:
            if doc.get("kind") in CORE_KINDS:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                validated += 1
    assert validated >= 8, f"only {validated} core resources validated"
    print(f"validated {validated} core resources against Kubernetes {KUBERNETES_VERSION}")

    for path, docs in documents.items():
        if path.name != "kustomization.yaml":
            continue
        for entry in docs[0].get("resources", []) + [p["path"] for p in docs[0].get("patches", [])]:
            assert (path.parent / entry).exists(), f"{path} names {entry}, which does not exist"
    print("kustomizations name existing files")

    def one(kind, where):
        found = [d for p, docs in documents.items() if where in str(p) for d in docs if d["kind"] == kind]
        assert len(found) == 1, f"{kind} in {where}: {len(found)}"
        return found[0]

    deployment = one("Deployment", "k8s/base")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    kafkas = {d["metadata"]["name"]: d for docs in documents.values() for d in docs if d["kind"] == "Kafka"}
    pools = {d["metadata"]["labels"]["strimzi.io/cluster"]: d
             for docs in documents.values() for d in docs if d["kind"] == "KafkaNodePool"}
    mirrors = [d for docs in documents.values() for d in docs if d["kind"] == "KafkaMirrorMaker2"]
    for name, kafka in kafkas.items():
        assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled", name
        config = kafka["spec"]["kafka"]["config"]
        assert config["default.replication.factor"] == 3 and config["min.insync.replicas"] == 2, name
        pool = pools[name]
        assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"broker", "controller"}
        assert all(v["type"] == "persistent-claim" for v in pool["spec"]["storage"]["volumes"]), name
    print(f"Kafka clusters {sorted(kafkas)}: KRaft, 3 brokers on persistent volumes, RF 3, min ISR 2")

    overlays = sorted(p for p in deploy.glob("k8s/overlays/*") if p.is_dir())
    assert len(overlays) == 2, overlays
    regions = set()
    separators = set()
    for overlay in overlays:
        config_map = yaml.safe_load((overlay / "config.yaml").read_text())
        config = tomllib.loads(config_map["data"]["courier.toml"])
        region = config["region"]
        regions.add(region)
        log = config["log"]
        # The region router over every Kafka cluster here, named as MirrorMaker 2's aliases name them.
        assert log["kind"] == "regions", "each gateway routes over both regions"
        assert set(log["regions"]) == set(kafkas), f"router regions {sorted(log['regions'])}"
        assert region in log["regions"], f"the gateway's own region {region} is one of its regions"
        for name, cluster in log["regions"].items():
            assert cluster["bootstrap_servers"] == f"{name}-kafka-bootstrap.kafka.svc:9092", name
            assert cluster["replication_factor"] == 3, name
        bootstrap = log["regions"][region]["bootstrap_servers"]
        separators.add(log.get("replication_separator", "."))
        assert log.get("replication_policy", "default") == "default"
        http_port = int(config["http"]["listen"].rsplit(":", 1)[1])
        assert http_port == ports["http"], "the probes use the HTTP port courier.toml sets"
        grace = duration_seconds(config["shutdown"]["grace"])
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > grace + pre_stop, "the drain finishes first"
        for mirror in mirrors:
            aliases = {c["alias"]: c["bootstrapServers"] for c in mirror["spec"]["clusters"]}
            for name, cluster in log["regions"].items():
                assert aliases.get(name) == cluster["bootstrap_servers"], \
                    f"{mirror['metadata']['name']}: alias {name}"
        print(f"overlay {overlay.name}: region {region}, bootstrap {bootstrap}, grace {grace}s")

    directions = set()
    for mirror in mirrors:
        spec = mirror["spec"]
        for m in spec["mirrors"]:
            assert spec["connectCluster"] == m["targetCluster"], "MM2 runs beside its target"
            assert "checkpointConnector" in m, "checkpoints are what the gateway translates offsets with"
            for connector in ("sourceConnector", "checkpointConnector"):
                cfg = m[connector]["config"]
                assert cfg["replication.policy.class"].endswith("DefaultReplicationPolicy")
                assert {cfg["replication.policy.separator"]} == separators, "the gateways' separator"
            # The probe topic stays in its region (the gateways write it in each).
            assert re.match(f"(?:{m['topicsPattern']})$", "courier.canary") is None, m["topicsPattern"]
            assert re.match(f"(?:{m['topicsPattern']})$", "orders"), m["topicsPattern"]
            directions.add((m["sourceCluster"], m["targetCluster"]))
    assert directions == {(a, b) for a in regions for b in regions if a != b}, directions
    print(f"MirrorMaker 2 mirrors {sorted(directions)} with checkpoints and the default policy")
    print("deploy checks passed")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
