"""kopf's watches log in with the scheduler's own client configuration, not ~/.kube/config."""

from __future__ import annotations

from pathlib import Path

from tessera.operator.handlers import connection_info
from tessera.operator.kube import Kube

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {{server: "https://127.0.0.1:7001", certificate-authority: "{ca}"}}
- name: b
  cluster: {{server: "https://127.0.0.1:7002", insecure-skip-tls-verify: true}}
users:
- name: u
  user: {{token: "secret-a"}}
- name: v
  user: {{token: "secret-b"}}
contexts:
- name: first
  context: {{cluster: a, user: u}}
- name: second
  context: {{cluster: b, user: v}}
current-context: first
"""


def _kubeconfig(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(ca=ca))
    return path


def test_login_uses_the_given_kubeconfig_and_context(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path)
    first = connection_info(Kube.connect(str(path)))
    assert first.server == "https://127.0.0.1:7001"
    assert first.token == "secret-a" and first.scheme == "Bearer"
    assert first.ca_path and Path(first.ca_path).read_text().startswith("-----BEGIN CERTIFICATE")
    assert not first.insecure

    second = connection_info(Kube.connect(str(path), "second"))
    assert second.server == "https://127.0.0.1:7002"
    assert second.token == "secret-b"
    assert second.insecure
