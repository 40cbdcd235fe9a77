#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_tls_certificate
short_description: Issue a host's TLS certificate from a small CA on the controller
version_added: 0.3.0
description:
  - Makes sure that a CA exists in O(ca_dir) and that O(dest) holds a certificate and key for O(common_name), signed
    by that CA, which QEMU accepts for both ends of a TLS stream (migration, NBD, C(qemu-nbd) and C(qemu-img)).
  - Run it on the controller, with C(delegate_to=localhost), C(become=false) and the controller's Python
    (C(ansible_python_interpreter={{ ansible_playbook_python }})); the CA key never leaves the controller. The role
    C(livemig.qemu.hypervisor) runs it so and copies the files into each host's QEMU x509 directory.
  - The CA is made once, when neither C(ca-cert.pem) nor C(ca-key.pem) is in O(ca_dir) (mode 0700, the key 0600).
    It is an EC P-256 key with a self-signed certificate for 10 years (basic constraints CA, critical; key usage
    certificate and CRL signing, critical). The hosts of one play may run this at once; the directory's lock lets
    one of them make the CA.
  - The host's certificate C(<dest>/cert.pem) and key C(<dest>/key.pem) (mode 0600; O(dest) 0700). The key is EC
    P-256; the certificate has the subject C(CN=<common_name>), the subject alternative names O(ip_addresses) and
    O(dns_names), basic constraints not a CA (critical), key usage digital signature and key encipherment
    (critical; QEMU 7.2 and 10.0 want both, even for an EC key) and extended key usage TLS server and TLS client.
    It is valid for O(validity_days), but never past the CA's end.
  - It is issued again (a new key too) only when it or its key is missing or unreadable, when they do not belong
    together, when its subject or names differ from the options, when the CA in O(ca_dir) did not sign it, or when
    it expires within O(renew_days). Otherwise nothing changes, so re-running it renews certificates before they
    expire and keeps the CA.
  - A CA directory with only one of its two files, or a CA that expires within O(renew_days), fails the task with
    what to do.
extends_documentation_fragment:
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
options:
  ca_dir:
    description: The CA's directory on the controller; created (mode 0700) when missing.
    type: path
    default: ~/.local/share/livemig.qemu/tls-ca
  dest:
    description: The controller directory for the host's C(cert.pem) and C(key.pem), for example C(<ca_dir>/hosts/hv1).
    type: path
    required: true
  common_name:
    description:
      - The subject's common name, the host's name; QEMU's C(authz-simple) sees the subject as C(CN=<common_name>).
    type: str
    required: true
  ip_addresses:
    description:
      - The IP addresses the certificate is for, the host's migration address first (IPv6 with or without
        brackets).
    type: list
    elements: str
    default: []
  dns_names:
    description: The DNS names the certificate is for. One that is an IP address counts as one of O(ip_addresses).
    type: list
    elements: str
    default: []
  validity_days:
    description: How many days a new host certificate is valid.
    type: int
    default: 825
  renew_days:
    description: Issue the host certificate again when it expires within this many days; less than O(validity_days).
    type: int
    default: 30
requirements:
  - cryptography 40 or later (on the controller; ansible-core depends on it)
seealso:
  - module: livemig.qemu.qemu_host_check
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Issue hv1's certificate on the controller
  livemig.qemu.qemu_tls_certificate:
    ca_dir: ~/.local/share/livemig.qemu/tls-ca
    dest: ~/.local/share/livemig.qemu/tls-ca/hosts/hv1
    common_name: hv1
    ip_addresses: [192.0.2.11]
    dns_names: [hv1]
  delegate_to: localhost
  become: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  register: issued

- name: Say what QEMU's authz on a peer must list
  ansible.builtin.debug:
    msg: "{{ issued.subject }} until {{ issued.not_after }}"
"""

RETURN = r"""
ca_cert:
  description: The CA certificate, C(<ca_dir>/ca-cert.pem), to copy to every host as C(ca-cert.pem).
  returned: success
  type: str
  sample: /home/admin/.local/share/livemig.qemu/tls-ca/ca-cert.pem
cert:
  description: The host's certificate, to copy as C(server-cert.pem) and C(client-cert.pem).
  returned: success
  type: str
  sample: /home/admin/.local/share/livemig.qemu/tls-ca/hosts/hv1/cert.pem
key:
  description: The host's key (mode 0600), to copy as C(server-key.pem) and C(client-key.pem).
  returned: success
  type: str
  sample: /home/admin/.local/share/livemig.qemu/tls-ca/hosts/hv1/key.pem
subject:
  description: The certificate's subject as QEMU's C(authz-simple) compares it (GnuTLS's form).
  returned: success
  type: str
  sample: CN=hv1
not_after:
  description: When the certificate expires (ISO 8601, UTC).
  returned: success
  type: str
  sample: "2028-04-05T10:00:00+00:00"
ip_addresses:
  description: The certificate's IP addresses.
  returned: success
  type: list
  elements: str
  sample: [192.0.2.11]
dns_names:
  description: The certificate's DNS names.
  returned: success
  type: list
  elements: str
  sample: [hv1]
reasons:
  description:
    - What changed and why (a new CA, the certificate issued again and why, a mode made private); empty when
      nothing did.
  returned: success
  type: list
  elements: str
  sample: ["it expires on 2026-05-01, within 30 days"]
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _tlscert
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module


def main() -> None:
    run_module(
        {
            "ca_dir": {"type": "path", "default": "~/.local/share/livemig.qemu/tls-ca"},
            "dest": {"type": "path", "required": True},
            "common_name": {"type": "str", "required": True},
            "ip_addresses": {"type": "list", "elements": "str", "default": []},
            "dns_names": {"type": "list", "elements": "str", "default": []},
            "validity_days": {"type": "int", "default": 825},
            "renew_days": {"type": "int", "default": 30},
        },
        _tlscert.run,
        needs_qmp=False,
        host_required=False,
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
