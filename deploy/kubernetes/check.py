#!/usr/bin/env python3
"""Checks what schema validation cannot in deploy/kubernetes/*.yaml: every pod meets the
"restricted" Pod Security Standard, pins its image and pull policy, gives its probes time to
answer and bounds its emptyDir volumes; mounts only the keys of a Secret it needs (a cluster file
each), readable by nobody outside the pod's user and group; and addresses the scheduler over
TLS. Prints each problem; exits 1 if there is any."""

import sys

import yaml

RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def pod_specs(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield doc["metadata"]["name"], doc["spec"]


def check(name, spec):
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is of a kind the restricted profile forbids: {kinds}")
        if "emptyDir" in volume and "sizeLimit" not in (volume["emptyDir"] or {}):
            problems.append(f"emptyDir {volume['name']} has no sizeLimit")
        if "secret" in volume:
            secret = volume["secret"] or {}
            if not secret.get("items"):
                problems.append(
                    f"secret volume {volume['name']} mounts every key of {secret.get('secretName')!r}:"
                    " list the ones this pod needs")
            modes = [secret.get("defaultMode", 0o644)]
            modes += [item["mode"] for item in secret.get("items") or [] if "mode" in item]
            if any(mode & 0o007 for mode in modes):
                problems.append(f"secret volume {volume['name']} is readable by others (mode {max(modes):o})")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append("shares a host namespace")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        where = f"container {container['name']}"
        sc = container.get("securityContext") or {}

        def setting(key):
            return sc.get(key, pod_sc.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            problems.append(f"{where}: runs as root")
        seccomp = (setting("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: does not drop ALL capabilities")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {caps['add']}")
        image = container.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{where}: image {image!r} is not pinned to a release tag")
        if "imagePullPolicy" not in container:
            problems.append(f"{where}: no imagePullPolicy (a loaded image would be pulled)")
        for env in container.get("env") or []:
            if env.get("name") == "LADLE_SCHEDULER" and str(env.get("value", "")).startswith("http://"):
                problems.append(f"{where}: LADLE_SCHEDULER is plaintext ({env['value']}): use https://")
            if env.get("name") in ("LADLE_TOKEN", "LADLE_TOKEN_FILE"):
                problems.append(f"{where}: {env['name']}: give the pod its cluster file (LADLE_CLUSTER_FILE) instead")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container and container[probe].get("timeoutSeconds", 1) < 3:
                problems.append(f"{where}: {probe} times out after under 3 s")
    return [f"{name}: {p}" for p in problems]


def main(paths):
    problems = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                for name, spec in pod_specs(doc):
                    problems += [f"{path}: {p}" for p in check(name, spec)]
    for p in problems:
        print(p)
    if not problems:
        print(f"{', '.join(paths)}: every pod meets the restricted profile, pins its image, mounts only the"
              " Secret keys it lists and speaks TLS to the scheduler")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
