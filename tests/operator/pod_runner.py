"""A stand-in kubelet for tests and demos: runs the pods kwok binds to chosen nodes as local processes.

kwok fakes kubelets: pods bound to its nodes turn Running, but nothing runs.  To train for
real under Tessera's plans, this runner watches (polls) the pods bound to a chosen set of
nodes and, for each one:

* takes the pod from kwok (annotation ``kwok.x-k8s.io/status=custom``, which the test
  cluster's kwok disregards, see hack/cluster-up.sh) and reports it Running;
* starts the first container's ``command + args`` as a local process (own session) with the
  pod's env (literal values only) on top of the runner's own environment, in the container's
  ``workingDir`` (else the runner's cwd);
* writes the keys of every mounted ConfigMap as files under a private folder and points env
  values naming the mount path there; rewrites them whenever the ConfigMap changes
  (``plan.json`` before ``generation``, each atomically, so a reader of ``generation`` then
  ``plan.json`` never sees an older plan than the generation it read);
* maps the headless-Service DNS names of the job's replicas (``<job>-<i>.<job>-headless.<ns>.svc``,
  in ``MASTER_ADDR``, ``PET_MASTER_ADDR``, ``PET_RDZV_ENDPOINT``, the plan's ``master_addr``)
  to 127.0.0.1 with a port per (job, replica): there is no cluster DNS here, and every
  replica shares one loopback.  ``PET_RDZV_CONF`` gets ``is_host`` set for the pod the
  endpoint names (on a real cluster torchrun finds that out from the pod's address);
* kills the process tree (SIGKILL) when the pod's node stops being Ready (a crashed machine:
  nothing is reported), SIGTERM then SIGKILL when the pod is deleted (then finishes the
  deletion, as a kubelet confirms it), and reports the exit as the pod's phase
  (``Succeeded``/``Failed``, the exit code in ``containerStatuses``).  No restarts
  (``restartPolicy`` is treated as ``Never``).

For tests and demos only: no images, no isolation, no resource limits, one container.

Run: ``python tests/operator/pod_runner.py --kubeconfig K --namespace NS --nodes a100-0,a100-1
--work-dir DIR``; SIGTERM stops it and every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger("pod_runner")

KWOK_STATUS = "kwok.x-k8s.io/status"
WORKLOAD_LABEL = "tessera.dev/workload"
#: ports per job: replica i's process-group store at base + i, its torchrun store at base + 100 + i
PORTS_PER_JOB = 200
DELETE_GRACE_SECONDS = 5.0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc before anything is killed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def kill_tree(pid: int, sig: int) -> None:
    for p in descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


@dataclass
class LocalPod:
    uid: str
    namespace: str
    name: str
    node: str
    job: str
    root: Path
    localizer: Localizer
    proc: subprocess.Popen[bytes] | None = None
    #: volume name -> (ConfigMap name, local folder)
    mounts: dict[str, tuple[str, Path]] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)  # ConfigMap name -> resourceVersion written
    lost: bool = False  # its node failed: killed, nothing reported
    deleting: bool = False
    reported_exit: bool = False


class Ports:
    """Loopback ports per job (a block each) and per replica inside it."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.blocks: dict[tuple[str, str], int] = {}

    def block(self, namespace: str, job: str) -> int:
        key = (namespace, job)
        if key not in self.blocks:
            start = self.base + PORTS_PER_JOB * len(self.blocks)
            while not _free(start) or not _free(start + 100):
                start += PORTS_PER_JOB
            self.blocks[key] = start
        return self.blocks[key]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Localizer:
    """Rewrites one pod's env and plan from cluster names to loopback ports and local paths."""

    def __init__(self, namespace: str, job: str, pod: str, ports: Ports, mount_dirs: dict[str, Path]) -> None:
        self.job = job
        self.pod = pod
        self.base = ports.block(namespace, job)
        self.mount_dirs = mount_dirs  # mountPath -> local folder
        self.dns = re.compile(rf"^{re.escape(job)}-(\d+)\.{re.escape(job)}-headless\.{re.escape(namespace)}\.svc"
                              r"(\.cluster\.local)?$")

    def replica_of(self, host: str) -> int | None:
        match = self.dns.match(host)
        return int(match.group(1)) if match else None

    def master_port(self, host: str) -> int | None:
        replica = self.replica_of(host)
        return None if replica is None else self.base + replica

    def plan(self, raw: str) -> str:
        doc = json.loads(raw)
        port = self.master_port(str(doc.get("master_addr", "")))
        if port is not None:
            doc["master_addr"], doc["master_port"] = "127.0.0.1", port
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def env(self, env: dict[str, str]) -> dict[str, str]:
        out = dict(env)
        for addr_key, port_key in (("MASTER_ADDR", "MASTER_PORT"), ("PET_MASTER_ADDR", "PET_MASTER_PORT")):
            port = self.master_port(out.get(addr_key, ""))
            if port is not None:
                out[addr_key], out[port_key] = "127.0.0.1", str(port)
        endpoint = out.get("PET_RDZV_ENDPOINT", "")
        if endpoint:
            host = endpoint.rsplit(":", 1)[0]
            replica = self.replica_of(host)
            if replica is not None:
                out["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{self.base + 100 + replica}"
                # every replica is on 127.0.0.1 here, so torchrun cannot tell the store's host
                # from an address: the pod the endpoint names hosts it, as on a real cluster
                conf = [c for c in out.get("PET_RDZV_CONF", "").split(",") if c and not c.startswith("is_host=")]
                conf.append(f"is_host={'true' if host.split('.')[0] == self.pod else 'false'}")
                out["PET_RDZV_CONF"] = ",".join(conf)
        if "TESSERA_PLAN" in out:
            out["TESSERA_PLAN"] = self.plan(out["TESSERA_PLAN"])
        for key, value in list(out.items()):
            if value in self.mount_dirs:
                out[key] = str(self.mount_dirs[value])
        return out


class PodRunner:
    """Polls pods, nodes and ConfigMaps of one namespace; runs the pods bound to ``nodes``."""

    def __init__(self, api: client.ApiClient, namespace: str, nodes: set[str], work_dir: Path,
                 port_base: int, interval_seconds: float = 0.1) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.nodes = nodes
        self.work_dir = work_dir
        self.ports = Ports(port_base)
        self.interval = interval_seconds
        self.pods: dict[str, LocalPod] = {}
        self.stopping = threading.Event()

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except ApiException as err:
                log.warning("API error (retrying): %s %s", err.status, err.reason)
            except Exception:
                log.exception("tick failed (retrying)")
            self.stopping.wait(self.interval)
        self.shutdown()

    def tick(self) -> None:
        ready = {}
        for node in self.core.list_node().items:
            if node.metadata.name in self.nodes:
                ready[node.metadata.name] = any(c.type == "Ready" and c.status == "True"
                                                for c in node.status.conditions or [])
        pods = {p.metadata.uid: p for p in self.core.list_namespaced_pod(self.namespace).items}
        configmaps = {c.metadata.name: c for c in self.core.list_namespaced_config_map(self.namespace).items}
        # pods gone from the API: kill what still runs
        for uid in [u for u in self.pods if u not in pods]:
            local = self.pods.pop(uid)
            self._stop(local, graceful=False)
        for uid, pod in pods.items():
            node = pod.spec.node_name
            local = self.pods.get(uid)
            if local is None:
                if node in self.nodes and ready.get(node) and not pod.metadata.deletion_timestamp \
                        and (pod.status.phase or "Pending") not in ("Succeeded", "Failed"):
                    self._start(pod, configmaps)
                continue
            if not local.lost and not ready.get(local.node, False):
                # the machine "crashed": kill everything, report nothing (no kubelet is left)
                log.info("node %s not ready: killing %s", local.node, local.name)
                local.lost = True
                self._stop(local, graceful=False)
                continue
            if pod.metadata.deletion_timestamp and not local.deleting:
                local.deleting = True
                threading.Thread(target=self._delete, args=(local,), daemon=True).start()
                continue
            if not local.lost and not local.deleting:
                self._sync_files(local, configmaps)
                code = local.proc.poll() if local.proc else None
                if code is not None and not local.reported_exit:
                    local.reported_exit = True
                    self._report_exit(local, pod, code)

    # --- one pod ------------------------------------------------------------------------------

    def _start(self, pod: Any, configmaps: dict[str, Any]) -> None:
        meta, spec = pod.metadata, pod.spec
        container = spec.containers[0]
        root = self.work_dir / meta.name / meta.uid[:8]
        root.mkdir(parents=True, exist_ok=True)
        volumes = {v.name: v for v in spec.volumes or []}
        mounts: dict[str, tuple[str, Path]] = {}
        mount_dirs: dict[str, Path] = {}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is not None and volume.config_map is not None:
                local_dir = root / "mounts" / mount.mount_path.lstrip("/")
                local_dir.mkdir(parents=True, exist_ok=True)
                mounts[mount.name] = (volume.config_map.name, local_dir)
                mount_dirs[mount.mount_path] = local_dir
        job = (meta.labels or {}).get(WORKLOAD_LABEL, meta.name)
        localizer = Localizer(meta.namespace, job, meta.name, self.ports, mount_dirs)
        pod_env = {e.name: e.value for e in container.env or [] if e.value is not None}
        local = LocalPod(meta.uid, meta.namespace, meta.name, spec.node_name, job, root, localizer, mounts=mounts)
        self._sync_files(local, configmaps)
        command = [*(container.command or []), *(container.args or [])]
        # take the pod from kwok before reporting anything, so kwok does not overwrite it
        self.core.patch_namespaced_pod(meta.name, meta.namespace, {"metadata": {"annotations": {KWOK_STATUS: "custom"}}})
        log_file = (root / "output.log").open("ab")
        env = {**os.environ, **localizer.env(pod_env), "HOSTNAME": spec.hostname or meta.name}
        try:
            local.proc = subprocess.Popen(command, env=env, cwd=container.working_dir or None, stdout=log_file,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            log_file.close()
            log.warning("%s: cannot start %s: %s", meta.name, command, err)
            self._patch_status(meta.name, {"phase": "Failed", "message": f"pod_runner: {err}"})
            return
        finally:
            with contextlib.suppress(Exception):
                log_file.close()
        self.pods[meta.uid] = local
        assert local.proc is not None
        log.info("started %s on %s (pid %d): %s", meta.name, spec.node_name, local.proc.pid, " ".join(command))
        started = now_rfc3339()
        self._patch_status(meta.name, {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "startTime": started,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": container.name, "image": container.image or "", "imageID": "",
                                   "ready": True, "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": started}}}],
        })

    def _sync_files(self, local: LocalPod, configmaps: dict[str, Any]) -> None:
        localizer = local.localizer
        for cm_name, folder in local.mounts.values():
            cm = configmaps.get(cm_name)
            if cm is None or local.written.get(cm_name) == cm.metadata.resource_version:
                continue
            data = dict(cm.data or {})
            # plan.json first, generation last: the generation a reader sees is never ahead
            order = sorted(data, key=lambda k: (k == "generation", k != "plan.json", k))
            for key in order:
                value = localizer.plan(data[key]) if key == "plan.json" else data[key]
                tmp = folder / f".{key}.tmp"
                tmp.write_text(value)
                os.replace(tmp, folder / key)
            local.written[cm_name] = cm.metadata.resource_version

    def _report_exit(self, local: LocalPod, pod: Any, code: int) -> None:
        phase = "Succeeded" if code == 0 else "Failed"
        log.info("%s exited %d: %s", local.name, code, phase)
        finished = now_rfc3339()
        container = pod.spec.containers[0]
        self._patch_status(local.name, {
            "phase": phase,
            "conditions": [{"type": t, "status": "False", "lastTransitionTime": finished}
                           for t in ("ContainersReady", "Ready")],
            "containerStatuses": [{"name": container.name, "image": container.image or "", "imageID": "",
                                   "ready": False, "started": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": code, "finishedAt": finished,
                                                            "reason": "Completed" if code == 0 else "Error"}}}],
        })

    def _delete(self, local: LocalPod) -> None:
        """Stop the process like a kubelet, then confirm the deletion (grace 0)."""
        self._stop(local, graceful=True)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(local.name, local.namespace, grace_period_seconds=0,
                                            body=client.V1DeleteOptions(grace_period_seconds=0,
                                                                        preconditions={"uid": local.uid}))

    def _stop(self, local: LocalPod, graceful: bool) -> None:
        if local.proc is None or local.proc.poll() is not None:
            return
        if graceful:
            kill_tree(local.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                local.proc.wait(timeout=DELETE_GRACE_SECONDS)
                return
        kill_tree(local.proc.pid, signal.SIGKILL)
        local.proc.wait()

    def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        except ApiException as err:
            if err.status != 404:
                raise

    def shutdown(self) -> None:
        for local in self.pods.values():
            self._stop(local, graceful=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="run the pods bound to some kwok nodes as local processes")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated node names")
    parser.add_argument("--work-dir", required=True, help="per-pod folders: mounted files and output.log")
    parser.add_argument("--port-base", type=int, default=31000, help="first loopback port handed to jobs")
    parser.add_argument("--interval-seconds", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    runner = PodRunner(client.ApiClient(configuration), args.namespace, set(args.nodes.split(",")),
                       Path(args.work_dir), args.port_base, args.interval_seconds)
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stopping.set())
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
