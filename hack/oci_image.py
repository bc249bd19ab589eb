"""Write an OCI image layout from folders, deterministically, with the standard library only.

Used by hack/build-image.sh (`make image`); no Docker engine and no image tool is needed.

    python hack/oci_image.py layer ROOTFS OUT [--prefix opt/tessera] [--exclude opt/tessera]
        -> OUT.tar.gz (the gzipped layer) and OUT.json ({digest, diff_id, size})
    python hack/oci_image.py assemble LAYOUT --tag 0.1.0 --layer OUT1 --layer OUT2 \\
        --user 65532:65532 --entrypoint tessera --cmd operator ... --env K=V --label K=V --port 8080/tcp
        -> LAYOUT/{oci-layout,index.json,blobs/sha256/...}; prints the manifest digest

Reproducible: entries sorted by name, numeric owners without names, mtimes clamped to
SOURCE_DATE_EPOCH, hard links kept as links to the first path, gzip without a timestamp,
JSON with sorted keys.  The same folders give the same digests.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


class HashingWriter:
    """A write-only file that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: BinaryIO | gzip.GzipFile) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        self.inner.flush()


def walk(root: Path, exclude: set[str], rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under ``root``, depth first, names sorted."""
    for entry in sorted(os.scandir(root / rel), key=lambda e: e.name):
        path = f"{rel}/{entry.name}" if rel else entry.name
        if path in exclude:
            continue
        st = entry.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk(root, exclude, path)


def write_layer(root: Path, out: Path, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Tar + gzip ``root`` (its contents, under ``prefix``) into ``out``.tar.gz; return the descriptor."""
    epoch = source_date_epoch()
    prefix = prefix.strip("/")
    tar_path = out.with_name(out.name + ".tar.gz")
    links: dict[tuple[int, int], str] = {}
    with tar_path.open("wb") as raw:
        compressed = HashingWriter(raw)
        # mtime=0 and no file name: the gzip header carries nothing of this build
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=6, mtime=0) as gz:
            plain = HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                if prefix:
                    parts = prefix.split("/")
                    for i in range(len(parts)):
                        info = tarfile.TarInfo(("/".join(parts[: i + 1])) + "/")
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                        tar.addfile(info)
                for rel, st in walk(root, set(exclude)):
                    name = f"{prefix}/{rel}" if prefix else rel
                    info = tarfile.TarInfo(name)
                    info.mode = stat.S_IMODE(st.st_mode)
                    info.uid, info.gid = st.st_uid, st.st_gid
                    info.uname = info.gname = ""
                    info.mtime = min(int(st.st_mtime), epoch)
                    if stat.S_ISDIR(st.st_mode):
                        info.type, info.name = tarfile.DIRTYPE, name + "/"
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(root / rel)
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in links:
                            info.type, info.linkname = tarfile.LNKTYPE, links[key]
                            tar.addfile(info)
                            continue
                        links[key] = name
                        info.size = st.st_size
                        with (root / rel).open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        print(f"oci_image: skipping {name}: not a file, folder or link", file=sys.stderr)
    descriptor = {
        "mediaType": LAYER_MEDIA_TYPE,
        "digest": f"sha256:{compressed.sha256.hexdigest()}",
        "size": compressed.size,
        "diff_id": f"sha256:{plain.sha256.hexdigest()}",
    }
    out.with_name(out.name + ".json").write_text(json.dumps(descriptor, indent=1, sort_keys=True) + "\n")
    return descriptor


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def put_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def assemble(layout: Path, tag: str, layers: list[Path], config: dict[str, Any], history: list[str]) -> str:
    """Write the OCI layout at ``layout`` (replacing it); return the manifest digest."""
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source_date_epoch()))
    descriptors = []
    for layer in layers:
        desc = json.loads(layer.with_name(layer.name + ".json").read_text())
        blob = layout / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
        shutil.copyfile(layer.with_name(layer.name + ".tar.gz"), blob)
        descriptors.append(desc)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d in descriptors]},
        "history": [{"created": created, "created_by": h} for h in history],
    }
    config_desc = put_blob(layout, canonical(image_config), CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_desc,
        "layers": [{k: d[k] for k in ("mediaType", "digest", "size")} for d in descriptors],
    }
    manifest_desc = put_blob(layout, canonical(manifest), MANIFEST_MEDIA_TYPE)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [manifest_desc]}
    (layout / "index.json").write_bytes(canonical(index))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_desc["digest"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    layer = sub.add_parser("layer", help="one gzipped layer from a folder")
    layer.add_argument("root", type=Path)
    layer.add_argument("out", type=Path, help="writes OUT.tar.gz and OUT.json")
    layer.add_argument("--prefix", default="", help="path of the folder inside the image")
    layer.add_argument("--exclude", action="append", default=[], help="relative path left out (with its contents)")
    asm = sub.add_parser("assemble", help="the OCI layout from layers and the image config")
    asm.add_argument("layout", type=Path)
    asm.add_argument("--tag", required=True)
    asm.add_argument("--layer", action="append", type=Path, required=True)
    asm.add_argument("--history", action="append", default=[], help="created_by of each layer, in order")
    asm.add_argument("--user", default="")
    asm.add_argument("--env", action="append", default=[])
    asm.add_argument("--entrypoint", action="append", default=[])
    asm.add_argument("--cmd", action="append", default=[])
    asm.add_argument("--workdir", default="/")
    asm.add_argument("--port", action="append", default=[])
    asm.add_argument("--label", action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "layer":
        desc = write_layer(args.root, args.out, args.prefix, tuple(args.exclude))
        print(desc["digest"])
        return 0
    config: dict[str, Any] = {
        "User": args.user,
        "Env": args.env,
        "Entrypoint": args.entrypoint,
        "Cmd": args.cmd,
        "WorkingDir": args.workdir,
        "ExposedPorts": {p: {} for p in args.port},
        "Labels": dict(label.split("=", 1) for label in args.label),
    }
    history = args.history or [f"layer {i + 1}" for i in range(len(args.layer))]
    print(assemble(args.layout, args.tag, args.layer, config, history))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
