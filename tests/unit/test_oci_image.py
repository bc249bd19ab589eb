"""hack/oci_image.py: deterministic layers and a valid OCI layout, on a small folder."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oci_image", ROOT / "hack" / "oci_image.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oci = load()
EPOCH = 1_700_000_000


@pytest.fixture(autouse=True)
def epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))


def tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-link")
    (root / "bin" / "alias").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc" / "conf").write_text("x=1\n")
    (root / "skip").mkdir()
    (root / "skip" / "secret").write_text("no")
    return root


def members(tar_gz: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_gz, "r:gz") as tar:
        return tar.getmembers()


def test_a_layer_is_the_same_whatever_the_mtimes(tmp_path: Path) -> None:
    a = tree(tmp_path / "a")
    first = oci.write_layer(a, tmp_path / "one", exclude=("skip",))
    os.utime(a / "etc" / "conf", (EPOCH + 10_000, EPOCH + 10_000))  # newer than the epoch: clamped
    second = oci.write_layer(a, tmp_path / "two", exclude=("skip",))
    assert first == second
    data = (tmp_path / "one.tar.gz").read_bytes()
    assert first["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert first["size"] == len(data)
    assert first["diff_id"] == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert data[4:8] == b"\0\0\0\0"  # no timestamp in the gzip header


def test_a_layer_keeps_modes_links_and_order(tmp_path: Path) -> None:
    a = tree(tmp_path / "a")
    oci.write_layer(a, tmp_path / "l", prefix="opt/app", exclude=("skip",))
    entries = members(tmp_path / "l.tar.gz")
    names = [m.name.rstrip("/") for m in entries]
    assert names == ["opt", "opt/app", "opt/app/bin", "opt/app/bin/alias", "opt/app/bin/tool",
                     "opt/app/bin/tool-link", "opt/app/etc", "opt/app/etc/conf"]
    by_name = {m.name.rstrip("/"): m for m in entries}
    assert by_name["opt/app/bin/tool"].mode == 0o755
    assert by_name["opt/app/bin/alias"].issym() and by_name["opt/app/bin/alias"].linkname == "tool"
    assert by_name["opt/app/bin/tool-link"].islnk() and by_name["opt/app/bin/tool-link"].linkname == "opt/app/bin/tool"
    assert all(m.mtime <= EPOCH and m.uname == "" for m in entries)


def test_the_layout_is_consistent(tmp_path: Path) -> None:
    oci.write_layer(tree(tmp_path / "a"), tmp_path / "l1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("f")
    oci.write_layer(tmp_path / "b", tmp_path / "l2", prefix="opt")
    layout = tmp_path / "layout"
    config = {"User": "65532:65532", "Entrypoint": ["tool"], "Cmd": ["x"]}
    digest = oci.assemble(layout, "1.0", [tmp_path / "l1", tmp_path / "l2"], config, ["one", "two"])
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    def blob(d: str) -> bytes:
        data = (layout / "blobs" / "sha256" / d.removeprefix("sha256:")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == d.removeprefix("sha256:")
        return data

    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == digest and entry["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    manifest = json.loads(blob(digest))
    assert entry["size"] == len(blob(digest))
    image_config = json.loads(blob(manifest["config"]["digest"]))
    assert image_config["config"] == config
    layers = [blob(layer["digest"]) for layer in manifest["layers"]]
    assert image_config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(d)).hexdigest()
                                                  for d in layers]
    assert [h["created_by"] for h in image_config["history"]] == ["one", "two"]
    assert image_config["created"] == "2023-11-14T22:13:20Z"
    # again: the same digest
    assert oci.assemble(tmp_path / "layout2", "1.0", [tmp_path / "l1", tmp_path / "l2"], config,
                        ["one", "two"]) == digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layers[1]))) as tar:
        assert tar.getnames() == ["opt", "opt/f"]


@pytest.mark.skipif(os.geteuid() != 0, reason="umoci needs root to unpack with the layers' owners")
def test_umoci_unpacks_the_layout(tmp_path: Path) -> None:
    if shutil.which("umoci") is None:  # installed from Debian by the image build's own script
        subprocess.run(["bash", str(ROOT / "hack" / "build-image.sh"), "--tools-only"], check=True,
                       capture_output=True, timeout=600)
    oci.write_layer(tree(tmp_path / "a"), tmp_path / "l1", exclude=("skip",))
    layout = tmp_path / "layout"
    oci.assemble(layout, "1.0", [tmp_path / "l1"], {"Entrypoint": ["/bin/tool"]}, ["one"])
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1.0", str(tmp_path / "bundle")], check=True,
                   capture_output=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "bin" / "tool").read_text().startswith("#!/bin/sh")
    assert not (rootfs / "skip").exists()
    spec = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert spec["process"]["args"] == ["/bin/tool"]


def test_run_image_resolves_mount_points_inside_the_root(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("run_image", ROOT / "hack" / "run_image.py")
    assert spec and spec.loader
    run_image = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_image)
    rootfs = tmp_path / "rootfs"
    (rootfs / "run").mkdir(parents=True)
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "var").mkdir()
    (rootfs / "var" / "run").symlink_to("/run")  # absolute, as in Debian: must not reach the host's /run
    (rootfs / "bin").symlink_to("usr/bin")
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert run_image.in_root(rootfs, sa) == rootfs / "run/secrets/kubernetes.io/serviceaccount"
    assert run_image.in_root(rootfs, "/bin/sh") == rootfs / "usr/bin/sh"
    assert run_image.in_root(rootfs, "/../../etc/passwd") == rootfs / "etc/passwd"
