# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The x509 certificates of the TLS streams: a small CA on the controller, one certificate per host signed by it,
and the preflight check of two hosts' TLS directories. The qemu_tls_certificate module's handler.

Private to the livemig.qemu collection. It runs on the controller only (the module, delegated to localhost, and
the planner) and needs the Python library cryptography, which ansible-core depends on; the hosts never import it.
The CA key is read and written here and nowhere else.

QEMU (GnuTLS's gnutls_x509_crt_get_dn) names a peer by its certificate's subject in the certificate's own order,
not in RFC 4514's reversed one: a subject O=Example, then CN=hv1, is "O=Example,CN=hv1" to authz-simple, where
cryptography's rfc4514_string() says "CN=hv1,O=Example". `qemu_dn` renders it as QEMU does.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._tlsfiles import CA_CERT, CLIENT_CERT, SERVER_CERT

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:
    CRYPTOGRAPHY_ERROR: str | None = f"the Python library cryptography is needed on the controller: {exc}"
else:
    CRYPTOGRAPHY_ERROR = None

CA_KEY = "ca-key.pem"
HOST_CERT, HOST_KEY = "cert.pem", "key.pem"
CA_DAYS = 3650
SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before now: host clocks differ
FIX = "re-issue it (livemig.qemu.certificates)"
DNS_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
# The attribute names GnuTLS prints; it prints any other attribute as OID=#hex, which is not rendered here.
GNUTLS_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "surName", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L",
    "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "title",
    "2.5.4.15": "businessCategory", "2.5.4.17": "postalCode", "2.5.4.42": "givenName", "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym",
    "0.9.2342.19200300.100.1.1": "UID", "0.9.2342.19200300.100.1.25": "DC", "1.2.840.113549.1.9.1": "EMAIL",
}
KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
              "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")


# -- names --------------------------------------------------------------------------------------------------------

def qemu_dn(name: x509.Name) -> str:
    """The subject as QEMU's authz-simple compares it: the RDNs in the certificate's order, GnuTLS's names."""
    return ",".join("+".join(_attribute(attribute) for attribute in rdn) for rdn in name.rdns)


def _attribute(attribute: x509.NameAttribute) -> str:
    name = GNUTLS_NAMES.get(attribute.oid.dotted_string)
    if name is None:
        raise LivemigError(f"the subject attribute {attribute.oid.dotted_string} is one QEMU names by its DER "
                           f"value: use a subject of CN, O, OU, C, L, ST or DC")
    return attribute.rfc4514_string({attribute.oid: name})


def bare_address(address: str) -> str:
    """An address without IPv6 brackets; an IP address in its canonical form."""
    text = str(address).strip()
    ip = parse_ip(text)
    return str(ip) if ip is not None else text


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `text` names, with or without IPv6 brackets; None when it is no IP address."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def subject_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The IP addresses and the DNS names of the certificate's subjectAltName."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ([str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
            [name.lower() for name in names.get_values_for_type(x509.DNSName)])


# -- issuing ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    ca_dir: str
    dest: str
    common_name: str
    ip_addresses: tuple[str, ...]
    dns_names: tuple[str, ...]
    validity_days: int
    renew_days: int

    @property
    def subject(self) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])


@dataclass
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: str
    reasons: list[str]


def run(task: Any) -> dict[str, Any]:
    """The qemu_tls_certificate module."""
    if CRYPTOGRAPHY_ERROR:
        raise LivemigError(CRYPTOGRAPHY_ERROR)
    return ensure(parse_request(task.params), task.check_mode)


def parse_request(params: dict[str, Any]) -> Request:
    """The module's options, checked; a DNS name that is an IP address counts as one."""
    common_name = params["common_name"]
    if not 1 <= len(common_name) <= 64 or not common_name.isprintable():
        raise LivemigError(f"common_name {common_name!r}: give 1 to 64 printable characters")
    ips, dns = [], []
    for value in params["ip_addresses"]:
        ip = parse_ip(value)
        if ip is None:
            raise LivemigError(f"ip_addresses: {value!r} is not an IP address")
        ips.append(str(ip))
    for value in params["dns_names"]:
        ip = parse_ip(value)
        if ip is not None:
            ips.append(str(ip))
        elif DNS_NAME.match(value):
            dns.append(value.lower())
        else:
            raise LivemigError(f"dns_names: {value!r} is not a DNS name")
    if params["validity_days"] < 1 or not 0 <= params["renew_days"] < params["validity_days"]:
        raise LivemigError(f"validity_days ({params['validity_days']}) must be at least 1 and renew_days "
                           f"({params['renew_days']}) from 0 to less than that")
    return Request(params["ca_dir"], params["dest"], common_name, tuple(dict.fromkeys(ips)),
                   tuple(dict.fromkeys(dns)), params["validity_days"], params["renew_days"])


def ensure(request: Request, check_mode: bool, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The CA (made once) and the host's certificate and key in `dest`, issued again only when needed."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert_path, key_path = os.path.join(request.dest, HOST_CERT), os.path.join(request.dest, HOST_KEY)
    try:
        with ca_lock(request.ca_dir, check_mode):
            authority = ensure_ca(request.ca_dir, check_mode, now, request.renew_days)
        cert, reasons = read_host(cert_path, key_path)
        if cert is not None:
            reasons = renewal_reasons(cert, request, authority, now)
        if reasons:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = issue(authority, key, request.subject, request.ip_addresses, request.dns_names,
                         request.validity_days, now)
            if not check_mode:
                os.makedirs(request.dest, mode=0o700, exist_ok=True)
                write_pair(cert_path, cert, key_path, key)
        reasons = authority.reasons + reasons + tighten(request.dest, 0o700, check_mode)
        reasons += tighten(key_path, 0o600, check_mode)
    except OSError as exc:
        raise LivemigError(f"cannot use the CA directory {request.ca_dir} or {request.dest}: {exc}") from exc
    ips, dns = subject_names(cert)
    return {"changed": bool(reasons), "reasons": reasons, "ca_cert": authority.path, "cert": cert_path,
            "key": key_path, "subject": qemu_dn(cert.subject), "not_after": not_after(cert).isoformat(),
            "ip_addresses": ips, "dns_names": dns}


@contextlib.contextmanager
def ca_lock(ca_dir: str, check_mode: bool) -> Iterator[None]:
    """Hold the CA directory's lock: the hosts of one play issue at once, and exactly one of them makes the CA."""
    if not os.path.isdir(ca_dir):
        if check_mode:
            yield
            return
        os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    descriptor = os.open(ca_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def ensure_ca(ca_dir: str, check_mode: bool, now: datetime.datetime, renew_days: int) -> Authority:
    """The CA in `ca_dir`, made when neither of its files is there (in check mode only in memory)."""
    cert_path, key_path = os.path.join(ca_dir, CA_CERT), os.path.join(ca_dir, CA_KEY)
    present = [name for name in (CA_CERT, CA_KEY) if os.path.exists(os.path.join(ca_dir, name))]
    if not present:
        key = ec.generate_private_key(ec.SECP256R1())
        authority = Authority(issue_ca(key, now), key, cert_path, [f"made a new CA in {ca_dir}"])
        if not check_mode:
            write_pair(cert_path, authority.cert, key_path, key)
        return authority
    if len(present) == 1:
        raise LivemigError(f"{ca_dir} holds {present[0]} but not the other of {CA_CERT} and {CA_KEY}: restore it, "
                           f"or move {ca_dir} away to start a new CA (every host then needs a new certificate)")
    try:
        cert, key = read_pair(cert_path, key_path)
    except (ValueError, TypeError) as exc:
        raise LivemigError(f"the CA in {ca_dir} cannot be read: {exc}") from exc
    if public_der(key) != public_der(cert) or not is_ca(cert):
        raise LivemigError(f"{key_path} is not the key of the CA certificate {cert_path}")
    if not_after(cert) - now < datetime.timedelta(days=renew_days):
        raise LivemigError(f"the CA {cert_path} expires on {not_after(cert):%Y-%m-%d}: move {ca_dir} away and run "
                           f"livemig.qemu.certificates for every host, which starts a new CA")
    return Authority(cert, key, cert_path, tighten(ca_dir, 0o700, check_mode) + tighten(key_path, 0o600, check_mode))


def issue_ca(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"livemig.qemu CA {secrets.token_hex(4)}")])
    return (builder(name, name, key, now, now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256()))


def issue(authority: Authority, key: ec.EllipticCurvePrivateKey, subject: x509.Name, ip_addresses: tuple[str, ...],
          dns_names: tuple[str, ...], days: int, now: datetime.datetime) -> x509.Certificate:
    """A host certificate for both ends of a TLS stream, never valid longer than its CA."""
    end = min(now + datetime.timedelta(days=days), not_after(authority.cert))
    names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses] + [x509.DNSName(n) for n in dns_names]
    made = (builder(subject, authority.cert.subject, key, now, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # QEMU 7.2 and 10.0 refuse a critical key usage without key encipherment, even for an EC key.
            .add_extension(key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                           critical=False))
    if names:
        made = made.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return made.sign(authority.key, hashes.SHA256())


def builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime.datetime,
            end: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - SKEW).not_valid_after(end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def key_usage(**wanted: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{**dict.fromkeys(KEY_USAGES, False), **wanted})


def read_host(cert_path: str, key_path: str) -> tuple[x509.Certificate | None, list[str]]:
    """The host's certificate when it is there with its key, else why it must be issued."""
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        return None, ["there is no certificate yet"]
    try:
        cert, key = read_pair(cert_path, key_path)
    except (ValueError, TypeError) as exc:
        return None, [f"the certificate or key cannot be read ({exc})"]
    if public_der(key) != public_der(cert):
        return None, ["the key does not match the certificate"]
    return cert, []


def renewal_reasons(cert: x509.Certificate, request: Request, authority: Authority,
                    now: datetime.datetime) -> list[str]:
    """Why the host's certificate is not the one asked for; empty when it is."""
    reasons = []
    if cert.subject != request.subject:
        reasons.append(f"its subject is {cert.subject.rfc4514_string()}, not CN={request.common_name}")
    names = subject_names(cert)
    if (sorted(names[0]), sorted(names[1])) != (sorted(request.ip_addresses), sorted(request.dns_names)):
        reasons.append(f"it names {names[0] + names[1]}, not {list(request.ip_addresses + request.dns_names)}")
    if not signed_by(cert, [authority.cert]):
        reasons.append(f"it is not signed by the CA {authority.path}")
    if not_after(cert) - now < datetime.timedelta(days=request.renew_days):
        reasons.append(f"it expires on {not_after(cert):%Y-%m-%d}, within {request.renew_days} days")
    return reasons


def tighten(path: str, mode: int, check_mode: bool) -> list[str]:
    """Take the group's and others' rights from a file or directory that has any; what was done."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return []
    if not current & 0o077:
        return []
    if not check_mode:
        os.chmod(path, mode)
    return [f"set the mode of {path} to {mode:04o} (it was {current:04o})"]


def read_pair(cert_path: str, key_path: str) -> tuple[x509.Certificate, Any]:
    """A certificate and its key from PEM files; ValueError or TypeError when one of them is not one."""
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    with open(key_path, "rb") as handle:
        return cert, serialization.load_pem_private_key(handle.read(), password=None)


def write_pair(cert_path: str, cert: x509.Certificate, key_path: str, key: ec.EllipticCurvePrivateKey) -> None:
    """The key (0600), then the certificate; after a crash between the two, the pair does not match and is issued
    again (a CA's is refused as half a CA)."""
    _files.atomic_write(key_path, key_pem(key), mode=0o600)
    _files.atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_der(holder: Any) -> bytes:
    """The public key of a private key or a certificate, to tell whether they belong together."""
    return holder.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def signed_by(cert: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    for authority in authorities:
        try:
            cert.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def not_before(cert: x509.Certificate) -> datetime.datetime:
    if hasattr(cert, "not_valid_before_utc"):  # cryptography 42 and later
        return cert.not_valid_before_utc
    return cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


# -- preflight: two hosts' TLS directories -------------------------------------------------------------------------

@dataclass
class HostTLS:
    """One host's certificates as its qemu_host_check `tls` result gave them."""
    host: str
    dir: str
    cas: list[x509.Certificate]
    server: x509.Certificate
    client: x509.Certificate


def tls_problems(source_tls: dict[str, Any] | None, target_tls: dict[str, Any] | None, source_name: str,
                 target_name: str, target_address: str,
                 now: datetime.datetime | None = None) -> tuple[list[str], dict[str, Any]]:
    """Whether the source and the target can open TLS streams to each other, and the names QEMU needs for it.

    The info: `source_dn` and `target_dn`, the subjects of each host's client-cert.pem as QEMU's authz-simple on
    the other host compares them, and `target_hostname`, the address the source checks the target's server
    certificate against (QEMU's tls-hostname: bare, no IPv6 brackets).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    hostname = bare_address(target_address)
    info: dict[str, Any] = {"source_dn": None, "target_dn": None, "target_hostname": hostname}
    problems: list[str] = []
    source = host_tls(source_name, source_tls, problems)
    target = host_tls(target_name, target_tls, problems)
    for side, key in ((source, "source_dn"), (target, "target_dn")):
        if side is not None:
            info[key] = client_dn(side, problems)
    if source is None or target is None:
        return problems, info
    problems += trust_problems(source, target)
    problems += validity_problems(source, [(CLIENT_CERT, source.client)], now)
    problems += validity_problems(target, [(SERVER_CERT, target.server)], now)
    problems += address_problems(target, hostname)
    return problems, info


def host_client_dn(host: str, tls: dict[str, Any] | None) -> str | None:
    """The subject of one host's client certificate, as the other host's authz admits it; None when its TLS
    directory does not give one (the plan, which compares both hosts, says why)."""
    side = host_tls(host, tls, [])
    return None if side is None else client_dn(side, [])


def host_tls(host: str, tls: dict[str, Any] | None, problems: list[str]) -> HostTLS | None:
    """The host's parsed certificates; None, with the problems noted, when they are not all there."""
    tls = tls or {}
    problems += [f"{host}: {problem}" for problem in tls.get("problems") or []]
    if not tls.get("exists"):
        if not tls.get("problems"):
            problems.append(f"{host}: no TLS directory was reported")
        return None
    pems = [tls.get("ca_pem"), tls.get("cert_pem"), tls.get("client_cert_pem")]
    if None in pems:  # missing or unreadable, which the host's problems say
        return None
    try:
        return HostTLS(host, tls["dir"], x509.load_pem_x509_certificates(pems[0].encode()),
                       x509.load_pem_x509_certificate(pems[1].encode()),
                       x509.load_pem_x509_certificate(pems[2].encode()))
    except ValueError as exc:
        problems.append(f"{host}: a certificate in {tls['dir']} cannot be read ({exc}): {FIX}")
        return None


def client_dn(side: HostTLS, problems: list[str]) -> str | None:
    try:
        return qemu_dn(side.client.subject)
    except LivemigError as exc:
        problems.append(f"{side.host}: {side.dir}/{CLIENT_CERT}: {exc}")
        return None


def trust_problems(source: HostTLS, target: HostTLS) -> list[str]:
    """One CA on both hosts, which signed the certificates each shows the other."""
    fingerprints = [{ca.fingerprint(hashes.SHA256()) for ca in side.cas} for side in (source, target)]
    if not fingerprints[0] & fingerprints[1]:
        return [f"{source.host} and {target.host} have different CA certificates ({CA_CERT}): issue both hosts' "
                f"certificates from one CA (livemig.qemu.certificates with one livemig_tls_ca_dir)"]
    problems = []
    for shown, name, cert, trusting in ((target, SERVER_CERT, target.server, source),
                                        (source, CLIENT_CERT, source.client, target)):
        if not signed_by(cert, trusting.cas):
            problems.append(f"{shown.host}: {shown.dir}/{name} is not signed by the CA of {trusting.host}'s "
                            f"{CA_CERT}, so {trusting.host} refuses it: {FIX}")
    return problems


def validity_problems(side: HostTLS, certs: list[tuple[str, x509.Certificate]],
                      now: datetime.datetime) -> list[str]:
    """The certificate the host shows, and every CA certificate it loads (QEMU refuses an expired one)."""
    problems = []
    for name, cert in certs + [(CA_CERT, ca) for ca in side.cas]:
        where = f"{side.host}: {side.dir}/{name}"
        if not_after(cert) < now:
            problems.append(f"{where} expired on {not_after(cert):%Y-%m-%d %H:%M} UTC: {FIX}")
        elif not_before(cert) > now:
            problems.append(f"{where} is valid only from {not_before(cert):%Y-%m-%d %H:%M} UTC: check the clocks")
    return problems


def address_problems(target: HostTLS, hostname: str) -> list[str]:
    """The target's server certificate names the address the source connects to."""
    ips, dns = subject_names(target.server)
    if hostname in ips or hostname.lower() in dns:
        return []
    named = ", ".join([f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns]) or "no address"
    return [f"{target.host}: {target.dir}/{SERVER_CERT} does not name the migration address {hostname} (it names "
            f"{named}): {FIX} with that address as livemig_migration_address"]
