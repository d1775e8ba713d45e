"""Checks deploy/: every YAML document parses; core Kubernetes kinds validate against the Kubernetes
API schema (kubernetes-validate, strict: unknown fields are errors); kustomizations name files that
exist; each overlay, rendered with its components (this script applies the patches itself, and when
kubectl is on PATH compares that with `kubectl kustomize`), validates too and its courier.toml parses
and agrees with the manifests (every port it listens on is a container port a Service exposes, probes
on the plain HTTP port, the TLS files on a read-only Secret mount without subPath, the drain deadline),
the cert-manager resources have what cert-manager needs (their schemas are not Kubernetes' own), and
with the Strimzi resources (the region router's regions are the Kafka clusters, by their bootstrap
Service names and MirrorMaker 2 aliases; the replication policy and separator are MM2's; the probe
topic is not mirrored).

Usage: deploy_check.py DEPLOY_DIR. Prints one line per check; exits non-zero on the first failure."""

import copy
import pathlib
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}
CERT_MANAGER_KINDS = {"Certificate", "Issuer", "ClusterIssuer"}
ISSUER_TYPES = {"selfSigned", "ca", "acme", "vault", "venafi"}
# The front ends with a listen address and a [<front end>.tls] table, and their default plain ports
# (the crates' Config::default_listen).
FRONT_ENDS = {"grpc": 50051, "mqtt": 1883, "amqp": 5672, "http": 8080}
# Where clients reach each TLS listener through its Service (deploy/README.md, "TLS").
TLS_SERVICE_PORTS = {("grpc", "listen"): 443, ("mqtt", "listen"): 8883,
                     ("mqtt", "websocket_listen"): 8884, ("amqp", "listen"): 5671, ("http", "listen"): 8443}
# The keys of the Secret cert-manager writes for a Certificate.
CERT_MANAGER_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# Strategic merge keys of the lists the patches here touch (the rest are replaced whole).
MERGE_KEYS = {"containers": "name", "volumes": "name", "volumeMounts": "mountPath", "env": "name"}


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"durations here are whole seconds: {text!r}"
    return int(match.group(1))


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def tls_keys(repo):
    """The keys a [<front end>.tls] table takes: TlsConfig's fields (deny_unknown_fields)."""
    source = (repo / "gateway/src/tls/config.rs").read_text()
    body = re.search(r"pub struct TlsConfig \{(.*?)\n\}", source, re.S).group(1)
    keys = set(re.findall(r"^\s*pub (\w+):", body, re.M))
    assert {"listen", "cert", "key", "client_auth"} <= keys, keys
    return keys


def merge(base, patch):
    """A strategic merge patch as far as the patches here need it: maps merge, lists of containers,
    volumes, mounts, env and ports merge by their key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge_list(key, base[key], value) if key in base and isinstance(value, list) \
                else merge(base.get(key), value)
        return merged
    return copy.deepcopy(patch)


def merge_list(field, base, patch):
    key = MERGE_KEYS.get(field)
    if field == "ports":
        key = "containerPort" if any("containerPort" in p for p in base + patch) else "port"
    if key is None:
        return copy.deepcopy(patch)
    merged = [copy.deepcopy(item) for item in base]
    for item in patch:
        at = [i for i, old in enumerate(merged) if old.get(key) == item.get(key)]
        if at:
            merged[at[0]] = merge(merged[at[0]], item)
        else:
            merged.insert(0, copy.deepcopy(item))  # kustomize puts added items first
    return merged


def load_docs(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory):
    """The resources of a kustomization (or component) directory with its components and patches
    applied, and its namespace set: what `kubectl kustomize` gives, minus labels."""
    kustomization = load_docs(directory / "kustomization.yaml")[0]
    resources = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        resources += render(target) if target.is_dir() else load_docs(target)
    for entry in kustomization.get("components", []):
        component = directory / entry
        spec = load_docs(component / "kustomization.yaml")[0]
        assert spec["kind"] == "Component", f"{component} is not a Component"
        resources += render(component)
    if kustomization.get("kind") == "Component":
        # A component's patches apply to the resources of whoever lists it: its caller applies them.
        return resources
    patches = [pathlib.Path(c) / p["path"] for c in kustomization.get("components", [])
               for p in load_docs(directory / c / "kustomization.yaml")[0].get("patches", [])]
    patches += [p["path"] for p in kustomization.get("patches", [])]
    for entry in patches:
        for patch in load_docs(directory / entry):
            at = [i for i, r in enumerate(resources)
                  if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
            assert len(at) == 1, f"{directory / entry}: {patch['kind']}/{patch['metadata']['name']} " \
                                 f"matches {len(at)} resources"
            resources[at[0]] = merge(resources[at[0]], patch)
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def projection(resources):
    """What the checks read of a rendering, to compare ours with kubectl's."""
    seen = {}
    for r in resources:
        key = (r["kind"], r["metadata"]["name"], r["metadata"].get("namespace"))
        if r["kind"] == "Deployment":
            pod = r["spec"]["template"]["spec"]
            c = pod["containers"][0]
            value = (sorted((p["name"], p["containerPort"]) for p in c["ports"]),
                     sorted(yaml.safe_dump(m, sort_keys=True) for m in c["volumeMounts"]),
                     sorted(yaml.safe_dump(v, sort_keys=True) for v in pod["volumes"]))
        elif r["kind"] == "Service":
            value = sorted((p["name"], p["port"], p["targetPort"]) for p in r["spec"]["ports"])
        elif r["kind"] == "ConfigMap":
            value = r["data"]
        else:
            value = yaml.safe_dump(r["spec"], sort_keys=True)
        seen[key] = value
    return seen


def check_cert_manager(resources):
    """cert-manager's resources, checked by hand: kubernetes-validate knows only Kubernetes' kinds.
    Returns the Secrets the Certificates write, by name."""
    issuers = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Issuer"}
    certificates = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Certificate"}
    secrets = {}
    for r in resources:
        if r["kind"] not in CERT_MANAGER_KINDS:
            continue
        assert r["apiVersion"] == "cert-manager.io/v1", f"{r['kind']} {r['metadata']['name']}"
        spec = r["spec"]
        if r["kind"] in ("Issuer", "ClusterIssuer"):
            kinds = set(spec) & ISSUER_TYPES
            assert len(kinds) == 1 and set(spec) == kinds, f"issuer {r['metadata']['name']}: {sorted(spec)}"
            if "ca" in spec:
                signer = [c for c in certificates.values() if c["spec"].get("secretName") == spec["ca"]["secretName"]]
                assert signer and signer[0]["spec"].get("isCA"), \
                    f"issuer {r['metadata']['name']}: no CA Certificate writes {spec['ca']['secretName']}"
            continue
        name = r["metadata"]["name"]
        for field in ("secretName", "issuerRef"):
            assert spec.get(field), f"Certificate {name} lacks spec.{field}"
        ref = spec["issuerRef"]
        assert ref.get("name") and ref.get("group", "cert-manager.io") == "cert-manager.io", name
        if ref.get("kind", "Issuer") == "Issuer":
            assert ref["name"] in issuers, f"Certificate {name}: Issuer {ref['name']} is not here"
        assert spec.get("isCA") or spec.get("dnsNames"), f"Certificate {name} lacks spec.dnsNames"
        assert spec["secretName"] not in secrets, f"two Certificates write {spec['secretName']}"
        secrets[spec["secretName"]] = r
    return secrets


def check_tls(overlay, resources, config, known_keys):
    """The [<front end>.tls] tables agree with the rendered manifests."""
    deployment = [r for r in resources if r["kind"] == "Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = [r for r in resources if r["kind"] == "Service"]
    namespace = deployment["metadata"].get("namespace", "default")
    secrets = check_cert_manager(resources)
    mounted = set()

    # Every Service port reaches a container port; which Service ports reach each container port.
    exposed = {}
    for service in services:
        for p in service["spec"]["ports"]:
            target = p["targetPort"]
            number = ports.get(target) if isinstance(target, str) else target
            assert number in ports.values(), f"{service['metadata']['name']}: targetPort {target} is no container port"
            exposed.setdefault(number, []).append((service["metadata"]["name"], p["port"]))

    # What the config listens on: the plain listeners (unless a TLS table with no address of its own
    # turns them to TLS) and the TLS listeners.
    listens = {}
    for front_end, default in FRONT_ENDS.items():
        section = config.get(front_end, {})
        if not section.get("enabled", True):
            continue
        listens[(front_end, "plain")] = port_of(section["listen"]) if "listen" in section else default
        if front_end == "mqtt" and "websocket_listen" in section:
            listens[("mqtt", "plain websocket")] = port_of(section["websocket_listen"])
        tls = section.get("tls")
        if tls is None:
            continue
        unknown = set(tls) - known_keys
        assert not unknown, f"{overlay.name}: {front_end}.tls has unknown keys {sorted(unknown)}"
        assert front_end == "mqtt" or "websocket_listen" not in tls, f"{front_end}.tls.websocket_listen"
        auth = tls.get("client_auth", "none")
        assert auth in ("none", "optional", "required"), f"{front_end}.tls.client_auth {auth!r}"
        assert (auth != "none") == ("client_ca" in tls), f"{front_end}.tls: client_ca goes with client_auth"
        assert "crl" not in tls or "client_ca" in tls, f"{front_end}.tls: crl without client_ca"
        assert str(tls.get("min_version", "1.2")) in ("1.2", "1.3"), f"{front_end}.tls.min_version"
        for which in ("listen", "websocket_listen"):
            if which in tls:
                listens[(front_end, f"tls {which}")] = port = port_of(tls[which])
                public = TLS_SERVICE_PORTS[(front_end, which)]
                assert any(p == public for _, p in exposed.get(port, [])), \
                    f"{overlay.name}: {front_end}.tls.{which} (container port {port}) is not on Service port {public}"
        if "listen" not in tls and "websocket_listen" not in tls:
            assert front_end != "http", "http.tls with no listen turns the probes' port to TLS"

        # The files: on a read-only Secret (or ConfigMap) mount, a directory mount (no subPath, so a
        # renewed certificate reaches the pod), and keys the Secret has.
        files = [tls[k] for k in ("cert", "key", "client_ca", "crl") if k in tls]
        files += [sni[k] for sni in tls.get("sni", []) for k in ("cert", "key")]
        for file in files:
            mounts = [m for m in container["volumeMounts"]
                      if posixpath.dirname(file) == m["mountPath"].rstrip("/")]
            assert len(mounts) == 1, f"{overlay.name}: {front_end}.tls file {file} is on no volume mount"
            mount = mounts[0]
            assert "subPath" not in mount and "subPathExpr" not in mount, \
                f"{overlay.name}: {mount['mountPath']} uses subPath, which never sees a renewed certificate"
            assert mount.get("readOnly"), f"{overlay.name}: {mount['mountPath']} is not read-only"
            volume = [v for v in pod["volumes"] if v["name"] == mount["name"]][0]
            assert "secret" in volume or "configMap" in volume, f"{file}: volume {volume['name']}"
            name = posixpath.basename(file)
            if "secret" in volume:
                secret = volume["secret"]
                items = {i["path"]: i["key"] for i in secret.get("items", [])}
                key = items.get(name, name if not items else None)
                assert key, f"{file}: the Secret's items do not include it"
                if secret["secretName"] in secrets:
                    mounted.add(secret["secretName"])
                    assert key in CERT_MANAGER_SECRET_KEYS, \
                        f"{file}: {secret['secretName']} (cert-manager) holds {sorted(CERT_MANAGER_SECRET_KEYS)}"
                    assert not secret.get("optional"), f"{secret['secretName']} must be there to start"
                    if key != "ca.crt":
                        # Clients name the gateway by its Services: the certificate carries those names.
                        dns = set(secrets[secret["secretName"]]["spec"]["dnsNames"])
                        for service in services:
                            n = service["metadata"]["name"]
                            wanted = {n, f"{n}.{namespace}.svc", f"{n}.{namespace}.svc.cluster.local"}
                            assert wanted <= dns, f"{secret['secretName']}: dnsNames lack {sorted(wanted - dns)}"

    # Both ways: each listened port is a container port a Service exposes, each container port is
    # listened on.
    for (front_end, which), port in listens.items():
        assert port in ports.values(), f"{overlay.name}: {front_end} {which} port {port} is no container port"
        assert port in exposed, f"{overlay.name}: {front_end} {which} port {port} is on no Service"
    stale = set(ports.values()) - set(listens.values())
    assert not stale, f"{overlay.name}: container ports {sorted(stale)} are not listened on"

    # Probes on the plain HTTP port.
    http_port = listens[("http", "plain")]
    assert ports["http"] == http_port, "the probes use the HTTP port courier.toml sets"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        target = container[probe]["httpGet"]["port"]
        assert ports.get(target, target) == http_port, f"{probe} is not on plain HTTP"
        assert container[probe]["httpGet"].get("scheme", "HTTP") == "HTTP", probe
    tls_listeners = sorted(f"{f} {w.removeprefix('tls ')} {p}" for (f, w), p in listens.items() if w.startswith("tls"))
    return tls_listeners, sorted(mounted)


def check_auth(overlay, pod, config):
    """Authentication is on: [auth] names a users file and a policy, on a read-only directory mount
    of a Secret (no subPath, so an edited Secret is reloaded), and anonymous clients are not let in
    from beyond loopback."""
    auth = config.get("auth")
    assert auth, f"{overlay}: courier.toml has no [auth]: only loopback clients would be served"
    assert auth.get("allow_anonymous") is not True, f"{overlay}: anonymous clients allowed"
    container = pod["containers"][0]
    files = [auth[k] for k in ("users_file", "policy_file") if k in auth]
    assert "users_file" in auth or "jwt" in auth, f"{overlay}: [auth] configures no authenticator"
    assert "policy_file" in auth, f"{overlay}: no policy: every client may do anything"
    for file in files:
        mounts = [m for m in container["volumeMounts"]
                  if posixpath.dirname(file) == m["mountPath"].rstrip("/")]
        assert len(mounts) == 1, f"{overlay}: auth file {file} is on no volume mount"
        mount = mounts[0]
        assert "subPath" not in mount, f"{overlay}: {mount['mountPath']} uses subPath (never reloaded)"
        assert mount.get("readOnly"), f"{overlay}: {mount['mountPath']} is not read-only"
        volume = [v for v in pod["volumes"] if v["name"] == mount["name"]][0]
        assert "secret" in volume, f"{overlay}: {file} is not from a Secret"
        assert not volume["secret"].get("optional"), f"{overlay}: the auth Secret must be there to start"
    return files


def main(deploy):
    repo = deploy.parent
    documents = {}
    for path in sorted(deploy.rglob("*.yaml")):
        if path.relative_to(deploy).parts[0] == "helm":
            continue  # templates are YAML only once rendered: helm_check.py checks the chart
        docs = load_docs(path)
        assert docs, f"{path} holds no document"
        documents[path] = docs
        print(f"parsed {path.relative_to(deploy)}: {len(docs)} document(s)")

    # Patches of components are partial resources: they are validated in the overlays they render into.
    partial = set()
    for path, docs in documents.items():
        if path.name != "kustomization.yaml":
            continue
        spec = docs[0]
        assert spec["kind"] in ("Kustomization", "Component"), path
        for entry in spec.get("resources", []) + spec.get("components", []) + [p["path"] for p in spec.get("patches", [])]:
            assert (path.parent / entry).exists(), f"{path} names {entry}, which does not exist"
        for entry in spec.get("components", []):
            assert (path.parent / entry / "kustomization.yaml").exists(), f"{path}: component {entry}"
        if spec["kind"] == "Component":
            partial |= {(path.parent / p["path"]).resolve() for p in spec.get("patches", [])}
    print("kustomizations name existing files")

    validated = 0
    for path, docs in documents.items():
        if path.resolve() in partial:
            continue
        for doc in docs:
            if doc.get("kind") in CORE_KINDS:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                validated += 1
    assert validated >= 8, f"only {validated} core resources validated"
    print(f"validated {validated} core resources against Kubernetes {KUBERNETES_VERSION}")

    def one(kind, where):
        found = [d for p, docs in documents.items() if where in str(p) for d in docs if d["kind"] == kind]
        assert len(found) == 1, f"{kind} in {where}: {len(found)}"
        return found[0]

    deployment = one("Deployment", "k8s/base")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
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

    kubectl = shutil.which("kubectl")
    known_keys = tls_keys(repo)
    overlays = sorted(p for p in deploy.glob("k8s/overlays/*") if p.is_dir())
    assert len(overlays) == 2, overlays
    regions = set()
    separators = set()
    for overlay in overlays:
        resources = render(overlay)
        for resource in resources:
            kind = resource["kind"]
            assert kind in CORE_KINDS | CERT_MANAGER_KINDS, f"{overlay.name}: {kind} is checked by nothing"
            if kind in CORE_KINDS:
                kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        if kubectl:
            rendered = subprocess.run([kubectl, "kustomize", str(overlay)], check=True,
                                      capture_output=True, text=True).stdout
            theirs = projection(list(yaml.safe_load_all(rendered)))
            ours = projection(resources)
            assert theirs == ours, f"{overlay.name}: kubectl kustomize renders differently:\n{theirs}\n{ours}"
            how = "rendered as kubectl kustomize renders it"
        else:
            how = "rendered by this script (kubectl not found, so not compared with kubectl kustomize)"
        print(f"overlay {overlay.name}: {len(resources)} resources {how}, core kinds validated")

        rendered_pod = [r for r in resources if r["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
        config_map = [r for r in resources if r["kind"] == "ConfigMap"][0]
        config = tomllib.loads(config_map["data"]["courier.toml"])
        tls_listeners, secrets = check_tls(overlay, resources, config, known_keys)
        auth_files = check_auth(overlay.name, rendered_pod, config)
        print(f"overlay {overlay.name}: authentication on, {', '.join(auth_files)} on a read-only Secret mount")
        print(f"overlay {overlay.name}: TLS on {', '.join(tls_listeners) or 'nothing'}; Secret "
              f"{', '.join(secrets) or '(none)'} (cert-manager) on a read-only Secret mount without subPath; every "
              f"listened port a container port behind a Service, probes on plain HTTP")

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
        grace = duration_seconds(config["shutdown"]["grace"])
        rendered_container = rendered_pod["containers"][0]
        pre_stop = rendered_container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert rendered_pod["terminationGracePeriodSeconds"] > grace + pre_stop, "the drain finishes first"
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
            # The probe topic is mirrored (its copies measure the replication lag), the other
            # direction's copies are not (they would come back prefixed twice).
            pattern = f"(?:{m['topicsPattern']})$"
            assert re.match(pattern, "courier.canary"), m["topicsPattern"]
            assert re.match(pattern, "orders"), m["topicsPattern"]
            assert re.match(pattern, f"{m['targetCluster']}.orders") is None, m["topicsPattern"]
            directions.add((m["sourceCluster"], m["targetCluster"]))
    assert directions == {(a, b) for a in regions for b in regions if a != b}, directions
    print(f"MirrorMaker 2 mirrors {sorted(directions)} with checkpoints and the default policy")
    print("deploy checks passed")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
