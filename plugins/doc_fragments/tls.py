# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  tls_dir:
    description:
      - This host's TLS directory in QEMU's x509 layout (C(ca-cert.pem), C(server-cert.pem), C(server-key.pem),
        C(client-cert.pem), C(client-key.pem), C(dh-params.pem)), as the C(livemig.qemu.certificates) playbook
        lays it out; the C(livemig.qemu.live_migration) role passes each host's C(livemig_tls_dir).
      - Given, the stream is x509 TLS, the peer's certificate verified against C(ca-cert.pem). Left out, it is
        cleartext, and the TLS settings an earlier move left on the VM are cleared.
      - A directory that is missing, or lacks a file this end loads, fails the task before anything changes.
    type: path
    version_added: 0.3.0
"""

    SERVER = r"""
options:
  tls_peer_dn:
    description:
      - With O(tls_dir), the subject of the one client certificate admitted, as QEMU's C(authz-simple) compares
        it (GnuTLS's form, in the certificate's own order, such as C(CN=hv1) for the collection's certificates).
        Any other client is refused, even one with a certificate of the same CA. Required with O(tls_dir).
    type: str
    version_added: 0.3.0
"""

    CLIENT = r"""
options:
  tls_hostname:
    description:
      - With O(tls_dir), the name (an IP address or a DNS name) the receiving host's server certificate must bear.
      - Defaults to the address connected to.
    type: str
    version_added: 0.3.0
"""
