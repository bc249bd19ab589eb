"""The operator image from `make image`, run without a container engine on the test cluster.

hack/build-image.sh builds the OCI layout (cached Debian base + the pinned venv); umoci
unpacks it; hack/run_image.py runs its entrypoint the way the chart's pod runs it: as uid
65532, on a read-only root filesystem with a tmpfs /tmp, with the ServiceAccount token of
the chart's identity mounted where in-cluster configuration reads it, and the arguments of
the Deployment that `helm install` created.  It must then schedule the ElasticJob example.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_server import free_port
from workload_views import example_runs_then_goes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the chart helpers
from chart_helpers import CHART, helm

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "hack" / "build-image.sh"
RUN = ROOT / "hack" / "run_image.py"
VERSION = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
               if line.startswith("version = "))
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# a cold build (debootstrap, wheels) takes minutes; a cached one about one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Image:
    layout: Path
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.layout}:{VERSION}"


def build(out: Path, no_cache: bool = False) -> Image:
    env = {**os.environ, "TESSERA_IMAGE_OUT": str(out), "PYTHON": sys.executable}
    if no_cache:
        env["TESSERA_IMAGE_NO_CACHE"] = "1"
    proc = subprocess.run(["bash", str(BUILD)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"hack/build-image.sh failed:\n{proc.stderr[-6000:]}"
    return Image(out, Path(f"{out}.digest").read_text().strip())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        reason = "building and running the image needs root (debootstrap, mount namespace, chroot)"
        if os.environ.get("TESSERA_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("image")
    yield build(folder / "tessera-operator")
    shutil.rmtree(folder, ignore_errors=True)  # 150 MB; pytest keeps its last temp folders


def blob(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())


def test_the_image_config_is_the_charts_contract(image: Image) -> None:
    index = json.loads((image.layout / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    assert entry["digest"] == image.digest
    manifest = blob(image.layout, entry["digest"])
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 2
    config = blob(image.layout, manifest["config"]["digest"])
    assert config["config"]["User"] == "65532:65532"   # numeric: runAsNonRoot checks it
    assert config["config"]["Entrypoint"] == ["tessera"]  # the chart's args start with "operator"
    assert config["config"]["Cmd"][0] == "operator"
    assert len(config["rootfs"]["diff_ids"]) == 2


def test_the_image_is_reproducible(image: Image, tmp_path: Path) -> None:
    # /opt/tessera built again from scratch (not from the layer cache), from the cached base
    try:
        again = build(tmp_path / "again", no_cache=True)
        assert again.digest == image.digest
    finally:
        shutil.rmtree(tmp_path / "again", ignore_errors=True)


@pytest.fixture(scope="module")
def bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image unpacked by umoci (which verifies every blob against its digest)."""
    folder = tmp_path_factory.mktemp("bundle")
    path = folder / "b"
    subprocess.run(["umoci", "unpack", "--image", image.ref, str(path)], check=True, capture_output=True, timeout=600)
    yield path
    shutil.rmtree(folder, ignore_errors=True)  # 570 MB unpacked


def test_the_unpacked_image_has_the_venv_and_no_pip(bundle: Path) -> None:
    rootfs = bundle / "rootfs"
    assert (rootfs / "opt/tessera/bin/tessera").is_file()
    site = rootfs / "opt/tessera/lib/python3.11/site-packages"
    assert (site / "kopf").is_dir() and (site / "tessera").is_dir()
    assert not list(site.glob("pip*")) and not list(site.glob("setuptools*"))
    assert not (rootfs / "opt/tessera/bin/pip").exists()
    passwd = (rootfs / "etc/passwd").read_text()
    assert "tessera:x:65532:65532:" in passwd
    # bytecode compiled at build time (the root filesystem is read-only at run time)
    assert list((site / "tessera" / "__pycache__").glob("*.cpython-311.pyc"))


@dataclass
class Identity:
    release: str
    namespace: str

    @property
    def fullname(self) -> str:
        return f"{self.release}-tessera"


@pytest.fixture(scope="module")
def identity(cluster: Any) -> Iterator[Identity]:
    """The chart installed without replicas: its ServiceAccount, RBAC and Deployment."""
    release = f"m{uuid.uuid4().hex[:6]}"
    namespace = f"tessera-{release}"
    helm("install", release, str(CHART), "--namespace", namespace, "--create-namespace",
         "--kubeconfig", str(cluster.kubeconfig), "--set", "replicaCount=0", env=cluster.env)
    try:
        yield Identity(release, namespace)
    finally:
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig),
             env=cluster.env, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def service_account_volume(cluster: Any, who: Identity, path: Path) -> Path:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    path.mkdir(mode=0o755)
    token = cluster.kubectl("create", "token", who.fullname, "-n", who.namespace, "--duration=1h").stdout.strip()
    (path / "token").write_text(token)
    (path / "ca.crt").write_text((cluster.dir / "pki" / "ca.crt").read_text())
    (path / "namespace").write_text(who.namespace)
    for f in path.iterdir():
        f.chmod(0o644)
    return path


def proc_status_ids(pid: int) -> tuple[str, str]:
    lines = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return lines["Uid"].split()[0], lines["Gid"].split()[0]


def root_mount_options(pid: int) -> list[str]:
    # mountinfo fields: id parent major:minor root mountpoint options ...; "/" is the image's root
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError("no / mount")


def test_the_image_schedules_the_example_as_the_chart_identity(
    crds: Any, image: Image, bundle: Path, identity: Identity, namespace: str, tmp_path: Path
) -> None:
    cluster = crds
    manifest = helm("get", "manifest", identity.release, "--namespace", identity.namespace,
                    "--kubeconfig", str(cluster.kubeconfig), env=cluster.env).stdout
    deployment = next(o for o in yaml.safe_load_all(manifest) if o and o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the Deployment's args, only the ports moved (this machine may use 8080/9090)
    health_port = free_port()
    args = [a.replace("$(POD_NAME)", "image-test") for a in container["args"]]
    args = [f"--metrics-port={free_port()}" if a.startswith("--metrics-port=") else a for a in args]
    args = [f"--liveness=http://0.0.0.0:{health_port}/healthz" if a.startswith("--liveness=") else a for a in args]
    env = [f"{e['name']}={e['value']}" for e in container["env"] if "value" in e]
    env += ["POD_NAME=image-test", f"POD_NAMESPACE={identity.namespace}"]
    # in-cluster configuration, as in the pod: the API server's address from the environment
    server = urlparse(yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    env += [f"KUBERNETES_SERVICE_HOST={server.hostname}", f"KUBERNETES_SERVICE_PORT={server.port}"]
    volume = service_account_volume(cluster, identity, tmp_path / "serviceaccount")

    cmd = [sys.executable, str(RUN), "--image", image.ref, "--bundle", str(bundle),
           "--mount", f"{volume}:{SA_DIR}:ro", *(f"--env={e}" for e in env), "--", *args]
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    example = ROOT / "examples" / "elasticjob-basic.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    try:
        def healthy() -> bool:
            assert proc.poll() is None, f"the image's operator exited:\n{log_path.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        cluster.wait_for(healthy, timeout=120, interval=0.5, what="the image's /healthz (the startup probe)")
        # the process that answers is the image's entrypoint, as the chart's user, on a read-only root
        assert proc_status_ids(proc.pid) == ("65532", "65532")
        assert "ro" in root_mount_options(proc.pid)
        assert Path(f"/proc/{proc.pid}/exe").resolve().is_relative_to((bundle / "rootfs").resolve())
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1] == b"/opt/tessera/bin/tessera" and cmdline[2] == b"operator", cmdline

        cluster.apply(example, namespace=namespace)
        example_runs_then_goes(cluster, namespace, name,
                               (identity.namespace, f"{identity.fullname}-scheduler"), "image-test",
                               timeout=90, what="scheduled by the image")
        text = log_path.read_text(errors="replace")
        assert "403" not in text and "forbidden" not in text.lower(), text[-4000:]
        assert "Read-only file system" not in text, text[-4000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        print(f"----- image operator log\n{log_path.read_text(errors='replace')[-6000:]}")
