"""Checks deploy/helm/courier with Helm 4's own library (helm-python-sdk: no helm binary): the chart
lints, and renders for every backend (kafka, the defaults; embedded; regions) and with TLS and
authentication on; in each rendering
  - every core object validates strictly against the Kubernetes API schema (kubernetes-validate,
    as deploy_check.py does); the CRD kinds (cert-manager's Certificate and Issuer, the Prometheus
    Operator's ServiceMonitor) are checked field by field;
  - courier.toml, from the ConfigMap, loads with the gateway's own loader (`courier config check`,
    the real binary), and its listeners are exactly the container's ports by name, its files are on
    read-only Secret mounts without subPath, the probes are on its plain HTTP port and the pod's
    grace outlasts its drain (deploy_check.py's checks of TLS and authentication, reused);
and with ci/region-a.yaml and ci/region-b.yaml the chart makes what the kustomize overlays make: the
same objects by kind and name, with the same selectors, ports, probes, env, volumes, security
contexts, HPA, PDB and certificates, and a courier.toml that loads to the same effective config.
Values the chart refuses (an unknown backend, a region not among the clusters, a listen address in
`config`, a grace it cannot read) fail the rendering with a message naming the value.

Usage: helm_check.py DEPLOY_DIR COURIER_BINARY. Prints one line per check; exits non-zero on the first
failure."""

import json
import pathlib
import subprocess
import sys
import tempfile

import helm_python
import kubernetes_validate
import yaml

import deploy_check

RELEASE = "courier"
NAMESPACE = "courier"
KUBE_VERSION = f"v{deploy_check.KUBERNETES_VERSION}"
CORE_KINDS = deploy_check.CORE_KINDS | {"PersistentVolumeClaim", "Secret"}
# Container port names are the ready line's listener names, so the two compare directly.
LISTENER_NAMES = {"grpc", "grpcs", "mqtt", "mqtt-ws", "mqtts", "mqtt-wss", "amqp", "amqps", "http", "https"}


def render(chart, values):
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    resources = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            resources += [doc for doc in yaml.safe_load_all(text) if doc]
    return resources


def config_check(binary, toml_text):
    """The gateway's own loader on this courier.toml: its summary, or the failure."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(toml_text)
        file.flush()
        # COURIER_* variables would be layered over the file: none here.
        env = {"PATH": "/usr/bin:/bin"}
        result = subprocess.run([binary, "config", "check", "--config", file.name, "--format", "json"],
                                capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"courier config check refused it:\n{result.stderr}\n{toml_text}"
    return json.loads(result.stdout)


def config_text(resources):
    """courier.toml: in the ConfigMap, or with configSecret in a Secret."""
    found = [r.get("data") or r.get("stringData") for r in resources
             if r["kind"] in ("ConfigMap", "Secret") and r["metadata"]["name"] == f"{RELEASE}-config"]
    assert len(found) == 1, f"{len(found)} config objects"
    return found[0]["courier.toml"]


def within(effective, wanted, path):
    """Every key of `wanted` is in the effective config with the same value."""
    if isinstance(wanted, dict):
        assert isinstance(effective, dict), f"{path}: {effective!r}"
        for key, value in wanted.items():
            assert key in effective, f"{path}.{key} did not reach the gateway's config"
            within(effective[key], value, f"{path}.{key}")
    else:
        assert effective == wanted, f"{path}: the gateway loaded {effective!r}, the values say {wanted!r}"


def one_or_none(resources, kind):
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) <= 1, f"{len(found)} {kind}"
    return found[0] if found else None


def one(resources, kind):
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def check_service_monitor(monitor, resources):
    """The Prometheus Operator's ServiceMonitor: it selects the HTTP Service and scrapes /metrics on
    its plain port, in the release's namespace."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1", monitor["apiVersion"]
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, sorted(spec)
    wanted = spec["selector"]["matchLabels"]
    services = [r for r in resources if r["kind"] == "Service"
                and wanted.items() <= r["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in services] == [f"{RELEASE}-http"], services
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    ports = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "tlsConfig"}, sorted(endpoint)
        assert endpoint["port"] == "http" and endpoint["port"] in ports, endpoint
        assert endpoint["path"] == "/metrics", endpoint


def check_rendering(case, resources, binary, known_keys):
    """One rendering on its own: schema, CRDs, the config with the real loader, its agreement with
    the Deployment and Services. Returns the loader's summary."""
    for resource in resources:
        kind = resource["kind"]
        assert resource["metadata"].get("namespace") == NAMESPACE, f"{kind} {resource['metadata']['name']}"
        if kind in CORE_KINDS:
            kubernetes_validate.validate(resource, deploy_check.KUBERNETES_VERSION, strict=True)
        elif kind == "ServiceMonitor":
            check_service_monitor(resource, resources)
        else:
            assert kind in deploy_check.CERT_MANAGER_KINDS, f"{case}: {kind} is checked by nothing"
    secrets = deploy_check.check_cert_manager(resources)

    deployment = one(resources, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    toml_text = config_text(resources)
    summary = config_check(binary, toml_text)
    config = deploy_check.tomllib.loads(toml_text)

    # What the gateway binds, by the ready line's names, is what the container declares.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listeners = {name: int(address.rsplit(":", 1)[1]) for name, address in summary["listeners"].items()}
    assert set(listeners) <= LISTENER_NAMES, listeners
    assert listeners == ports, f"{case}: the config listens on {listeners}, the container declares {ports}"
    assert all(a.startswith("0.0.0.0:") for a in summary["listeners"].values()), summary["listeners"]

    tls_listeners, mounted = deploy_check.check_tls(pathlib.PurePath(case), resources, config, known_keys)
    if config.get("auth", {}).get("users_file") or config.get("auth", {}).get("jwt"):
        deploy_check.check_auth(case, pod, config)
    for file in summary["files"]:
        assert any(file["path"].startswith(m["mountPath"].rstrip("/") + "/") and m.get("readOnly")
                   for m in container["volumeMounts"]), f"{case}: {file['key']} is on no read-only mount"
    grace = summary["shutdown_grace_seconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop, f"{case}: the kubelet would cut the drain"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    print(f"{case}: {len(resources)} objects valid; courier.toml loads ({summary['log']}, "
          f"listeners {' '.join(sorted(listeners))} = the container's ports; files {len(summary['files'])} "
          f"on read-only mounts; TLS {', '.join(tls_listeners) or 'off'}{' from ' + ', '.join(secrets) if secrets else ''}; "
          f"grace {grace:g}s < terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']})")
    return summary


def projection(resources, binary):
    """What the chart and the kustomize overlays must agree on, by (kind, name, namespace): labels
    and annotations aside (Helm's own, the config checksum), replicas aside (the chart leaves them
    to the HPA), and the config compared as the gateway loads it, not as text."""
    seen = {}
    for r in resources:
        key = (r["kind"], r["metadata"]["name"], r["metadata"].get("namespace"))
        spec = r.get("spec")
        if r["kind"] == "Deployment":
            template = spec["template"]
            pod = dict(template["spec"])
            container = dict(pod.pop("containers")[0])
            container.pop("imagePullPolicy", None)
            for field in ("ports", "volumeMounts", "env"):
                container[field] = sorted(container.get(field, []), key=json.dumps)
            pod["volumes"] = sorted(pod.get("volumes", []), key=json.dumps)
            value = {"selector": spec["selector"], "strategy": spec["strategy"],
                     "labels": template["metadata"]["labels"], "pod": pod, "container": container}
        elif r["kind"] == "Service":
            value = dict(spec, ports=sorted(spec["ports"], key=lambda p: p["name"]))
        elif r["kind"] in ("ConfigMap", "Secret"):
            data = r.get("data") or r.get("stringData")
            value = {"keys": sorted(data), "config": config_check(binary, data["courier.toml"])["config"]}
        else:
            value = spec
        seen[key] = json.loads(json.dumps(value, sort_keys=True))
    return seen


def differences(ours, theirs, path=""):
    """Where two projections differ, as readable lines."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        lines = []
        for key in sorted(set(ours) | set(theirs), key=str):
            if key not in ours or key not in theirs:
                lines.append(f"{path}/{key}: only in the {'chart' if key in ours else 'overlay'}")
            else:
                lines += differences(ours[key], theirs[key], f"{path}/{key}")
        return lines
    return [] if ours == theirs else [f"{path}: chart {ours!r}, overlay {theirs!r}"]


def refused(chart, values, wanted):
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except helm_python.HelmError as error:
        assert wanted in str(error), f"refused for another reason: {error}"
        return
    raise AssertionError(f"the chart rendered {values} (wanted a refusal naming {wanted!r})")


def main(deploy, binary):
    chart_dir = deploy / "helm/courier"
    chart = helm_python.Chart.load(chart_dir)
    known_keys = deploy_check.tls_keys(deploy.parent)
    cases = {"defaults": {}}
    for path in sorted((chart_dir / "ci").glob("*.yaml")):
        cases[path.stem] = yaml.safe_load(path.read_text()) or {}
    assert {"region-a", "region-b", "embedded", "kafka"} <= set(cases), sorted(cases)

    for case, values in cases.items():
        report = helm_python.lint(chart_dir, values, strict=True, kube_version=KUBE_VERSION)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        # Chart.yaml without an icon is Helm's only remark (severity 1, information).
        assert not problems, f"helm lint {case}: {problems}"
    print(f"helm lint (strict, Kubernetes {KUBE_VERSION}) passes for {', '.join(cases)}")

    summaries = {}
    renderings = {}
    for case, values in cases.items():
        renderings[case] = render(chart, values)
        summaries[case] = check_rendering(case, renderings[case], binary, known_keys)

    # Each backend, and TLS and authentication, as the values say.
    kinds = {case: s["log"].split(":", 1)[0] for case, s in summaries.items()}
    assert kinds["defaults"] == "kafka" and kinds["embedded"] == "embedded" and kinds["kafka"] == "kafka"
    assert kinds["region-a"] == kinds["region-b"] == "regions", kinds
    embedded = renderings["embedded"]
    deployment = one(embedded, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not [r for r in embedded if r["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]
    claim = one(embedded, "PersistentVolumeClaim")["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    data = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    mount = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == data[0]["name"]][0]
    assert summaries["embedded"]["log"] == f"embedded:{mount['mountPath']}" and not mount.get("readOnly")
    print(f"embedded: one pod, Recreate, no HPA or PDB, the log on PersistentVolumeClaim {claim} "
          f"at {mount['mountPath']}")
    kafka = renderings["kafka"]
    assert one(kafka, "ServiceMonitor") and not [r for r in kafka if r["kind"] == "Certificate"]
    assert one(kafka, "Secret")["metadata"]["name"] == f"{RELEASE}-config" and not one_or_none(kafka, "ConfigMap")
    effective = summaries["kafka"]["config"]
    values = cases["kafka"]
    assert effective["auth"]["jwt"].items() >= values["auth"]["jwt"].items(), effective["auth"]
    assert effective["log"]["properties"] == values["backend"]["kafka"]["properties"], effective["log"]
    assert effective["log"]["replication_factor"] == 3
    within(effective, values["config"], "config")
    print("kafka: courier.toml in a Secret; librdkafka properties, [auth.jwt], [[mqtt.routes]] and every "
          "`config` key reach the gateway as written; TLS from an existing Secret (no cert-manager "
          "objects), a ServiceMonitor")

    # A changed config rolls the pods; the same one does not.
    def checksum(values):
        return one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"topics": {"auto_create": False}}})
    print("a changed courier.toml changes the pods' checksum/config annotation")

    refused(chart, {"backend": {"kind": "postgres"}}, "backend.kind")
    refused(chart, dict(cases["region-a"], region="region-c"), "region-c")
    refused(chart, {"config": {"mqtt": {"listen": "0.0.0.0:1884"}}}, "config.mqtt")
    refused(chart, {"shutdown": {"grace": "20 parsecs"}}, "shutdown.grace")
    print("the chart refuses an unknown backend, a region without a cluster, a listen address in config, "
          "an unreadable grace")

    # The chart and the kustomize overlays make the same objects.
    for overlay in ("region-a", "region-b"):
        theirs = projection(deploy_check.render(deploy / "k8s/overlays" / overlay), binary)
        ours = projection(renderings[overlay], binary)
        assert set(ours) == set(theirs), f"{overlay}: objects only in the chart {sorted(set(ours) - set(theirs))}, " \
                                         f"only in the overlay {sorted(set(theirs) - set(ours))}"
        lines = differences(ours, theirs)
        assert not lines, f"{overlay}: the chart and the overlay differ:\n" + "\n".join(lines)
        print(f"{overlay}: the chart with ci/{overlay}.yaml makes the overlay's {len(ours)} objects "
              f"({', '.join(sorted({k for k, _, _ in ours}))}), alike in selectors, ports, probes, env, "
              f"volumes, security and the effective config")
    print("helm checks passed")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), sys.argv[2])
