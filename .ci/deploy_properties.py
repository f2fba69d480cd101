"""Asserts what deploy/ must keep true beyond the API schemas (.ci/check-deploy).

Reads the overlays rendered into DIR (DIR/embedded.yaml, DIR/ha.yaml) and
deploy/Dockerfile, and compares them with facts taken from the source: the
SAVEPOINTD_* variables savepointd reads (clap ignores unknown ones silently, so a typo
would go unnoticed in a cluster), its shutdown grace, the binaries and the crate's
rust-version. Prints every broken property and exits 1 if there is one.

Usage: python deploy_properties.py DIR
"""

import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRPC_PORT = 50051
HTTP_PORT = 9090
NONROOT_UID = 65532

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def source(path):
    return (ROOT / path).read_text()


def server_variables():
    names = set(re.findall(r'env\s*=\s*"(SAVEPOINTD_[A-Z0-9_]+)"', source("src/bin/savepointd.rs")))
    if not names:
        sys.exit("found no SAVEPOINTD_* variables in src/bin/savepointd.rs: has the flag syntax changed?")
    return names


def shutdown_grace_secs():
    """The longest a default shutdown takes: the savepoint drain, then the connection grace."""
    total = 0
    for setting in ("savepoint_drain", "shutdown_grace"):
        found = re.search(setting + r":\s*Duration::from_secs\((\d+)\)", source("src/server.rs"))
        if not found:
            sys.exit(f"found no default {setting} in src/server.rs: has it moved?")
        total += int(found.group(1))
    return total


def by_kind(resources, kind):
    return [r for r in resources if r["kind"] == kind]


def one(resources, kind, overlay):
    found = by_kind(resources, kind)
    check(len(found) == 1, f"{overlay}: expected one {kind}, found {len(found)}")
    return found[0] if found else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_pod(overlay, workload, config):
    """The properties both workloads share: identity, security, probes, resources."""
    template = workload["spec"]["template"]
    pod = template["spec"]
    name = f"{overlay}: {workload['kind']}"
    labels = template["metadata"].get("labels", {})
    check(selects(workload["spec"]["selector"].get("matchLabels"), labels),
          f"{name}: selector does not match the pod labels")
    check(pod.get("serviceAccountName") == "savepointd", f"{name}: not run as ServiceAccount savepointd")
    check(pod.get("automountServiceAccountToken") is False, f"{name}: mounts an API token it never uses")

    grace = shutdown_grace_secs()
    check(pod.get("terminationGracePeriodSeconds", 30) >= grace + 10,
          f"{name}: terminationGracePeriodSeconds must exceed the server's shutdown grace "
          f"({grace} s: savepoint drain plus shutdown grace, src/server.rs) with room to give up the lease")

    security = pod.get("securityContext", {})
    check(security.get("runAsNonRoot") is True, f"{name}: pod securityContext.runAsNonRoot is not true")
    check(security.get("runAsUser") == NONROOT_UID, f"{name}: pod runAsUser is not {NONROOT_UID} (the image's user)")
    check(security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccompProfile is not RuntimeDefault")

    containers = pod["containers"]
    if not check(len(containers) == 1, f"{name}: expected one container"):
        return
    container = containers[0]
    csec = container.get("securityContext", {})
    check(csec.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
    check(csec.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem is not true")
    check(csec.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities do not drop ALL")

    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(ports == {"grpc": GRPC_PORT, "http": HTTP_PORT}, f"{name}: container ports are {ports}")

    readiness = container.get("readinessProbe", {}).get("grpc", {})
    check(readiness.get("port") == GRPC_PORT and "service" not in readiness,
          f"{name}: readiness must be the native gRPC probe of the whole server on {GRPC_PORT}")
    liveness = container.get("livenessProbe", {})
    check(liveness.get("tcpSocket", {}).get("port") in ("grpc", GRPC_PORT),
          f"{name}: liveness must be a tcpSocket probe of the gRPC port (a follower is NOT_SERVING but alive)")

    resources = container.get("resources", {})
    for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
        for key in keys:
            check(key in resources.get(kind, {}), f"{name}: no resources.{kind}.{key}")

    annotations = template["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true"
          and annotations.get("prometheus.io/port") == str(HTTP_PORT),
          f"{name}: prometheus.io annotations do not point at port {HTTP_PORT}")

    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    check(refs == [config["metadata"]["name"]], f"{name}: envFrom does not name the ConfigMap ({refs})")

    settings = dict(config.get("data", {}))
    env = container.get("env", [])
    known = server_variables()
    for variable in list(settings) + [e["name"] for e in env]:
        if variable.startswith("SAVEPOINTD_"):
            check(variable in known, f"{name}: {variable} is not a variable savepointd reads")
    check(settings.get("SAVEPOINTD_LISTEN") == f"0.0.0.0:{GRPC_PORT}",
          f"{name}: SAVEPOINTD_LISTEN must be 0.0.0.0:{GRPC_PORT} for probes and the Service")
    check(settings.get("SAVEPOINTD_HTTP_LISTEN") == f"0.0.0.0:{HTTP_PORT}",
          f"{name}: SAVEPOINTD_HTTP_LISTEN must be 0.0.0.0:{HTTP_PORT}")
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    check(mounts.get("data") == settings.get("SAVEPOINTD_DATA_DIR") == "/data",
          f"{name}: SAVEPOINTD_DATA_DIR is not the mounted data volume /data")
    return container


def check_service(overlay, resources, pod_labels):
    service = one(resources, "Service", overlay)
    if service:
        check(selects(service["spec"]["selector"], pod_labels), f"{overlay}: Service does not select the pods")
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        check(ports == {"grpc": (GRPC_PORT, "grpc"), "http": (HTTP_PORT, "http")},
              f"{overlay}: Service ports are {ports}")
    account = one(resources, "ServiceAccount", overlay)
    if account:
        check(account["metadata"]["name"] == "savepointd", f"{overlay}: ServiceAccount is not savepointd")


def check_embedded(resources):
    check(not by_kind(resources, "Deployment"), "embedded: has a Deployment; the filesystem store allows one replica")
    workload = one(resources, "StatefulSet", "embedded")
    config = one(resources, "ConfigMap", "embedded")
    if not (workload and config):
        return
    check(workload["spec"].get("replicas") == 1, "embedded: the StatefulSet must have exactly 1 replica")
    claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
    check(claims == ["data"], f"embedded: expected one volume claim 'data', found {claims}")
    check(workload["spec"]["template"]["spec"].get("securityContext", {}).get("fsGroup") == NONROOT_UID,
          "embedded: fsGroup must make the volume writable by the server's user")
    check("SAVEPOINTD_ETCD_ENDPOINTS" not in config.get("data", {}), "embedded: sets etcd endpoints")
    check_pod("embedded", workload, config)
    check_service("embedded", resources, workload["spec"]["template"]["metadata"]["labels"])
    budget = one(resources, "PodDisruptionBudget", "embedded")
    if budget:
        check(budget["spec"].get("maxUnavailable") == 1 and "minAvailable" not in budget["spec"],
              "embedded: the PodDisruptionBudget must be maxUnavailable: 1 (minAvailable would block drains)")


def check_ha(resources):
    check(not by_kind(resources, "StatefulSet"), "ha: has a StatefulSet")
    check(not by_kind(resources, "PodDisruptionBudget"),
          "ha: a PodDisruptionBudget counts only Ready pods (the leader) and would block drains; "
          "see deploy/k8s/overlays/ha/kustomization.yaml")
    workload = one(resources, "Deployment", "ha")
    config = one(resources, "ConfigMap", "ha")
    if not (workload and config):
        return
    spec = workload["spec"]
    check(spec.get("replicas") == 3, "ha: the Deployment must have 3 replicas")
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    check(spec.get("strategy", {}).get("type") == "Recreate" or rolling.get("maxUnavailable") in ("100%", spec.get("replicas")),
          "ha: a rollout that keeps a pod available waits for a second Ready pod, which never comes")
    settings = config.get("data", {})
    check(bool(settings.get("SAVEPOINTD_ETCD_ENDPOINTS")), "ha: no SAVEPOINTD_ETCD_ENDPOINTS")
    check(settings.get("SAVEPOINTD_OBJECT_STORE_URL", "").startswith("s3://"), "ha: SAVEPOINTD_OBJECT_STORE_URL is not s3://...")
    container = check_pod("ha", workload, config)
    check_service("ha", resources, spec["template"]["metadata"]["labels"])
    if not container:
        return
    env = container.get("env", [])
    # Appended so that a missing one fails the order test below instead of raising.
    names = [e["name"] for e in env] + ["POD_IP", "SAVEPOINTD_ADVERTISE_ADDRESS"]
    pod_ip = next((e for e in env if e["name"] == "POD_IP"), {})
    check(pod_ip.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP",
          "ha: POD_IP does not come from status.podIP")
    advertise = next((e for e in env if e["name"] == "SAVEPOINTD_ADVERTISE_ADDRESS"), {})
    # $(POD_IP) expands only if POD_IP is defined earlier in the list.
    check(advertise.get("value") == f"$(POD_IP):{GRPC_PORT}"
          and names.index("POD_IP") < names.index("SAVEPOINTD_ADVERTISE_ADDRESS"),
          f"ha: SAVEPOINTD_ADVERTISE_ADDRESS must be $(POD_IP):{GRPC_PORT}, after POD_IP")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        entry = next((e for e in env if e["name"] == key), {})
        check(entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "savepointd-s3",
              f"ha: {key} must come from the Secret savepointd-s3")
        check(key not in settings, f"ha: {key} is in the ConfigMap")


def dockerfile_instructions(text):
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def check_dockerfile():
    dockerfile = source("deploy/Dockerfile")
    instructions = list(dockerfile_instructions(dockerfile))
    stages = [rest for word, rest in instructions if word == "FROM"]
    check(len(stages) >= 2, "Dockerfile: not a multi-stage build")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    wanted = tomllib.loads(source("Cargo.toml"))["package"]["rust-version"]
    builder = args.get("RUST_VERSION", "")
    as_tuple = lambda v: tuple(int(x) for x in v.split(".")[:2])
    check(bool(re.fullmatch(r"\d+\.\d+(\.\d+)?", builder)) and as_tuple(builder) >= as_tuple(wanted),
          f"Dockerfile: RUST_VERSION {builder!r} is older than the crate's rust-version {wanted}")
    check(stages and stages[0].startswith("rust:${RUST_VERSION}-bookworm"), "Dockerfile: the builder is not rust:<version>-bookworm")
    check(stages and re.fullmatch(r"gcr\.io/distroless/cc-debian12:nonroot", stages[-1]),
          "Dockerfile: the runtime is not gcr.io/distroless/cc-debian12:nonroot")
    users = [rest for word, rest in instructions if word == "USER"]
    check(users and users[-1] == f"{NONROOT_UID}:{NONROOT_UID}", f"Dockerfile: the last USER is not {NONROOT_UID}:{NONROOT_UID}")
    builds = [rest for word, rest in instructions if word == "RUN" and "cargo build" in rest]
    # The image carries the server and its CLI; the benchmark stays out of it.
    binaries = sorted(p.stem for p in (ROOT / "src/bin").glob("*.rs") if p.stem != "savepoint-bench")
    if check(len(builds) == 1, "Dockerfile: expected one cargo build"):
        check("--locked" in builds[0] and "--release" in builds[0], "Dockerfile: cargo build is not --release --locked")
        for binary in binaries:
            check(f"--bin {binary}" in builds[0], f"Dockerfile: does not build --bin {binary}")
    for word, rest in instructions:
        if word == "COPY" and "--from=" not in rest:
            for path in rest.split()[:-1]:
                check((ROOT / path).exists(), f"Dockerfile: COPY {path}: no such file in the repository")
    ignored = source(".dockerignore").split()
    check("target/" in ignored or "target" in ignored, ".dockerignore: does not exclude target/")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rendered = pathlib.Path(sys.argv[1])
    overlays = {"embedded": check_embedded, "ha": check_ha}
    for overlay, check_overlay in overlays.items():
        resources = [r for r in yaml.safe_load_all((rendered / f"{overlay}.yaml").read_text()) if r]
        check_overlay(resources)
    check_dockerfile()
    if failures:
        for failure in failures:
            print(f"deploy property broken: {failure}", file=sys.stderr)
        sys.exit(1)
    print(f"deploy properties hold: overlays {', '.join(overlays)} and deploy/Dockerfile")


if __name__ == "__main__":
    main()
