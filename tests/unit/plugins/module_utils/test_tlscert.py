"""Issuing the CA and the host certificates on the controller, QEMU's form of a DN, and the preflight check of two
hosts' TLS directories (from tables, and from certificates issued here)."""
from __future__ import annotations

import datetime
import os
import shutil
import stat
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tls_helpers import issue, lay_out, request

from ansible_collections.livemig.qemu.plugins.module_utils import _tlscert, _tlsfiles
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

DAY = datetime.timedelta(days=1)


def load(path) -> x509.Certificate:
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def extension(cert: x509.Certificate, kind):
    found = cert.extensions.get_extension_for_class(kind)
    return found.critical, found.value


def files_of(directory) -> dict[str, bytes]:
    found = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), directory)] = handle.read()
    return found


# -- issuing ------------------------------------------------------------------------------------------------------

def test_the_first_run_makes_a_private_ca_and_a_host_certificate_for_both_ends(tmp_path):
    ca_dir = tmp_path / "ca"
    issued = issue(ca_dir, "hv1", ips=("198.18.0.1",))
    assert issued["changed"] is True
    assert issued["reasons"] == [f"made a new CA in {ca_dir}", "there is no certificate yet"]
    assert (mode(ca_dir), mode(ca_dir / "ca-key.pem"), mode(ca_dir / "hosts" / "hv1"), mode(issued["key"])) == (
        0o700, 0o600, 0o700, 0o600)

    ca = load(issued["ca_cert"])
    assert ca.subject == ca.issuer and ca.subject.rfc4514_string().startswith("CN=livemig.qemu CA ")
    assert extension(ca, x509.BasicConstraints)[0] is True and extension(ca, x509.BasicConstraints)[1].ca is True
    critical, usage = extension(ca, x509.KeyUsage)
    assert critical and usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert 3649 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3650

    cert = load(issued["cert"])
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hv1")])
    cert.verify_directly_issued_by(ca)
    assert extension(cert, x509.BasicConstraints) == (True, x509.BasicConstraints(ca=False, path_length=None))
    critical, usage = extension(cert, x509.KeyUsage)
    assert critical and usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert list(extension(cert, x509.ExtendedKeyUsage)[1]) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _tlscert.subject_names(cert) == (["198.18.0.1"], ["hv1"])
    assert cert.public_key().curve.name == "secp256r1"
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now - datetime.timedelta(minutes=4)
    assert abs(cert.not_valid_after_utc - (now + 825 * DAY)) < datetime.timedelta(minutes=1)
    assert {key: issued[key] for key in ("subject", "not_after", "ip_addresses", "dns_names")} == {
        "subject": "CN=hv1", "not_after": cert.not_valid_after_utc.isoformat(), "ip_addresses": ["198.18.0.1"],
        "dns_names": ["hv1"]}


def test_a_second_run_changes_nothing_and_a_second_host_gets_the_same_ca(tmp_path):
    first = issue(tmp_path, "hv1")
    before = files_of(tmp_path)
    again = issue(tmp_path, "hv1")
    assert again["changed"] is False and again["reasons"] == [] and files_of(tmp_path) == before
    assert {key: again[key] for key in first if key not in ("changed", "reasons")} == {
        key: first[key] for key in first if key not in ("changed", "reasons")}
    other = issue(tmp_path, "hv2", ips=("127.0.0.2",))
    assert other["reasons"] == ["there is no certificate yet"] and other["ca_cert"] == first["ca_cert"]
    load(other["cert"]).verify_directly_issued_by(load(first["ca_cert"]))


def spoil_key(issued, tmp_path):
    stranger = issue(tmp_path / "elsewhere", "hv1")
    shutil.copyfile(stranger["key"], issued["key"])


@pytest.mark.parametrize("change, reason", [
    (lambda issued, tmp: request(tmp, "hv1", ips=("127.0.0.9",)),
     "it names ['127.0.0.1', 'hv1'], not ['127.0.0.9', 'hv1']"),
    (lambda issued, tmp: request(tmp, "hv1", dns_names=("hv1.example.org",)), "not ['127.0.0.1', 'hv1.example.org']"),
    (lambda issued, tmp: request(tmp, "hv1", common_name="hv1.example.org"), "its subject is CN=hv1, not CN=hv1.ex"),
    (lambda issued, tmp: os.remove(issued["key"]), "there is no certificate yet"),
    (lambda issued, tmp: os.remove(issued["cert"]), "there is no certificate yet"),
    (spoil_key, "the key does not match the certificate"),
    (lambda issued, tmp: open(issued["cert"], "w", encoding="ascii").write("not a certificate"),
     "the certificate or key cannot be read"),
    (lambda issued, tmp: os.rename(tmp / "ca-key.pem", tmp / "old-key.pem") or os.remove(tmp / "ca-cert.pem"),
     "it is not signed by the CA"),
])
def test_the_host_certificate_is_issued_again_when_it_is_not_the_one_asked_for(tmp_path, change, reason):
    issued = issue(tmp_path, "hv1")
    serial = load(issued["cert"]).serial_number
    asked = change(issued, tmp_path)
    asked = asked if isinstance(asked, _tlscert.Request) else request(tmp_path, "hv1")
    again = _tlscert.ensure(asked, False)
    assert again["changed"] is True and any(reason in text for text in again["reasons"]), again["reasons"]
    cert = load(again["cert"])
    cert.verify_directly_issued_by(load(again["ca_cert"]))
    assert cert.serial_number != serial
    assert _tlscert.ensure(asked, False)["changed"] is False


def test_it_is_renewed_within_renew_days_of_its_end(tmp_path):
    issued = issue(tmp_path, "hv1")
    end = load(issued["cert"]).not_valid_after_utc
    assert issue(tmp_path, "hv1", now=end - 31 * DAY)["changed"] is False
    renewed = issue(tmp_path, "hv1", now=end - 29 * DAY)
    assert renewed["reasons"] == [f"it expires on {end:%Y-%m-%d}, within 30 days"]
    assert load(renewed["cert"]).not_valid_after_utc > end + 700 * DAY


def test_check_mode_writes_nothing_and_tells_what_it_would_do(tmp_path):
    ca_dir = tmp_path / "ca"
    predicted = _tlscert.ensure(request(ca_dir, "hv1"), check_mode=True)
    assert predicted["changed"] is True and predicted["subject"] == "CN=hv1" and not ca_dir.exists()
    assert predicted["reasons"] == [f"made a new CA in {ca_dir}", "there is no certificate yet"]
    issued = issue(ca_dir, "hv1")
    os.chmod(issued["key"], 0o644)
    before = files_of(ca_dir)
    end = load(issued["cert"]).not_valid_after_utc
    predicted = _tlscert.ensure(request(ca_dir, "hv1"), check_mode=True, now=end - DAY)
    assert predicted["changed"] is True and len(predicted["reasons"]) == 2 and files_of(ca_dir) == before
    assert mode(issued["key"]) == 0o644


def test_modes_opened_by_someone_are_made_private_again(tmp_path):
    issued = issue(tmp_path, "hv1")
    for path, opened in ((tmp_path, 0o755), (tmp_path / "ca-key.pem", 0o640), (issued["key"], 0o604)):
        os.chmod(path, opened)
    again = issue(tmp_path, "hv1")
    assert again["reasons"] == [f"set the mode of {tmp_path} to 0700 (it was 0755)",
                                f"set the mode of {tmp_path / 'ca-key.pem'} to 0600 (it was 0640)",
                                f"set the mode of {issued['key']} to 0600 (it was 0604)"]
    assert (mode(tmp_path), mode(tmp_path / "ca-key.pem"), mode(issued["key"])) == (0o700, 0o600, 0o600)


@pytest.mark.parametrize("spoil, message", [
    (lambda ca: os.remove(ca / "ca-cert.pem"), "holds ca-key.pem but not the other of ca-cert.pem and ca-key.pem"),
    (lambda ca: os.remove(ca / "ca-key.pem"), "holds ca-cert.pem but not the other"),
    (lambda ca: shutil.copyfile(ca / "hosts" / "hv1" / "key.pem", ca / "ca-key.pem"), "is not the key of the CA"),
    (lambda ca: (ca / "ca-cert.pem").write_text("junk"), "cannot be read"),
])
def test_a_broken_ca_is_refused_not_replaced(tmp_path, spoil, message):
    issue(tmp_path, "hv1")
    spoil(tmp_path)
    before = files_of(tmp_path)
    with pytest.raises(LivemigError, match=message):
        issue(tmp_path, "hv2")
    assert files_of(tmp_path) == before


def test_a_ca_near_its_end_is_refused_and_caps_host_certificates_before(tmp_path):
    issued = issue(tmp_path, "hv1")
    ca_end = load(issued["ca_cert"]).not_valid_after_utc
    capped = issue(tmp_path, "hv2", now=ca_end - 100 * DAY)
    assert load(capped["cert"]).not_valid_after_utc == ca_end
    with pytest.raises(LivemigError, match=r"the CA .* expires on .*: move .* away and run livemig.qemu.certificates"):
        issue(tmp_path, "hv3", now=ca_end - 29 * DAY)


def test_hosts_issuing_at_once_share_one_ca(tmp_path, monkeypatch):
    """Every host of a play runs the module at once on the first run: only one of them may make the CA."""
    real = _tlscert.issue_ca

    def slow_issue_ca(*args):
        time.sleep(0.2)  # all the others arrive while the first makes the CA
        return real(*args)
    monkeypatch.setattr(_tlscert, "issue_ca", slow_issue_ca)
    results, names = {}, [f"hv{i}" for i in range(5)]
    threads = [threading.Thread(target=lambda name=name: results.update({name: issue(tmp_path / "ca", name)}))
               for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ca = load(tmp_path / "ca" / "ca-cert.pem")
    for name in names:
        load(results[name]["cert"]).verify_directly_issued_by(ca)
    assert sum(f"made a new CA in {tmp_path / 'ca'}" in results[name]["reasons"] for name in names) == 1


@pytest.mark.parametrize("changes, message", [
    ({"common_name": ""}, "common_name '': give 1 to 64 printable characters"),
    ({"common_name": "h" * 65}, "give 1 to 64"),
    ({"common_name": "hv1\n"}, "give 1 to 64 printable"),
    ({"ip_addresses": ["198.18.0.300"]}, "ip_addresses: '198.18.0.300' is not an IP address"),
    ({"dns_names": ["hv 1"]}, "dns_names: 'hv 1' is not a DNS name"),
    ({"dns_names": ["-hv1"]}, "is not a DNS name"),
    ({"validity_days": 0}, r"validity_days \(0\) must be at least 1"),
    ({"renew_days": 825}, r"renew_days \(825\) from 0 to less than that"),
    ({"renew_days": -1}, "renew_days"),
])
def test_bad_requests_are_refused(tmp_path, changes, message):
    params = {"ca_dir": str(tmp_path), "dest": str(tmp_path / "hv1"), "common_name": "hv1",
              "ip_addresses": ["127.0.0.1"], "dns_names": ["hv1"], "validity_days": 825, "renew_days": 30}
    with pytest.raises(LivemigError, match=message):
        _tlscert.parse_request({**params, **changes})


def test_addresses_are_canonical_and_an_ip_given_as_dns_name_is_an_ip():
    parsed = _tlscert.parse_request({"ca_dir": "/c", "dest": "/d", "common_name": "hv1",
                                     "ip_addresses": ["[2001:DB8::0:1]", "198.18.0.1"],
                                     "dns_names": ["HV1.Example.org", "198.18.0.1", "::2"],
                                     "validity_days": 10, "renew_days": 0})
    assert parsed.ip_addresses == ("2001:db8::1", "198.18.0.1", "::2")
    assert parsed.dns_names == ("hv1.example.org",)


# -- QEMU's form of a DN ----------------------------------------------------------------------------------------------

def name(*attributes) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


@pytest.mark.parametrize("subject, expected", [
    (name((NameOID.COMMON_NAME, "hv1")), "CN=hv1"),
    # The certificate's order, not RFC 4514's reversed one (cryptography's rfc4514_string gives CN=hv1,O=Example).
    (name((NameOID.ORGANIZATION_NAME, "Example"), (NameOID.COMMON_NAME, "hv1")), "O=Example,CN=hv1"),
    (name((NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "Ex, Inc+x"),
          (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"), (NameOID.COMMON_NAME, ' hv1"#;<>\\=')),
     'C=DE,O=Ex\\, Inc\\+x,OU=ops,CN=\\ hv1\\"#\\;\\<\\>\\\\='),
    (name((NameOID.EMAIL_ADDRESS, "a@b.c"), (NameOID.DOMAIN_COMPONENT, "org"), (NameOID.USER_ID, "u1"),
          (NameOID.STREET_ADDRESS, "s"), (NameOID.SERIAL_NUMBER, "42"), (NameOID.COMMON_NAME, "#hv1 ")),
     "EMAIL=a@b.c,DC=org,UID=u1,street=s,serialNumber=42,CN=\\#hv1\\ "),
    (name((NameOID.COMMON_NAME, "hvä1")), "CN=hvä1"),
])
def test_qemu_dn_is_gnutls_form(subject, expected):
    """The strings qemu-nbd printed for these subjects ("TLS x509 authz check for ... is denied")."""
    assert _tlscert.qemu_dn(subject) == expected


def test_qemu_dn_of_a_multi_valued_rdn_keeps_the_certificates_der_order(tmp_path):
    issued = issue(tmp_path, "hv1")
    rdn = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                                          x509.NameAttribute(NameOID.COMMON_NAME, "hv1")])
    authority = _tlscert.ensure_ca(str(tmp_path), False, datetime.datetime.now(datetime.timezone.utc), 30)
    cert = _tlscert.issue(authority, ec.generate_private_key(ec.SECP256R1()), x509.Name([rdn]), (), (), 1,
                          datetime.datetime.now(datetime.timezone.utc))
    assert _tlscert.qemu_dn(cert.subject) == "CN=hv1+O=Example" and issued["subject"] == "CN=hv1"


def test_an_attribute_gnutls_prints_as_hex_is_refused():
    with pytest.raises(LivemigError, match="2.5.4.97 is one QEMU names by its DER value"):
        _tlscert.qemu_dn(name((x509.ObjectIdentifier("2.5.4.97"), "x"), (NameOID.COMMON_NAME, "hv1")))


@pytest.mark.parametrize("given, bare", [
    ("198.18.0.2", "198.18.0.2"), ("[2001:db8::2]", "2001:db8::2"), ("2001:DB8:0::2", "2001:db8::2"),
    (" hv2.example.org ", "hv2.example.org"),
])
def test_bare_address(given, bare):
    assert _tlscert.bare_address(given) == bare


# -- preflight: two hosts' TLS directories ------------------------------------------------------------------------

@pytest.fixture
def hosts(tmp_path):
    """hv1 (source, 127.0.0.1) and hv2 (target, 127.0.0.2) with certificates of one CA, laid out as the role does."""
    def tls(name, ip, ca="ca", **lay):
        directory = tmp_path / f"{name}-{ca}-tls"
        lay_out(issue(tmp_path / ca, name, ips=(ip,)), directory, **lay)
        return directory
    return tls


def check(source_dir, target_dir, address="127.0.0.2", now=None):
    return _tlscert.tls_problems(_tlsfiles.inspect(str(source_dir)), _tlsfiles.inspect(str(target_dir)), "hv1",
                                 "hv2", address, now=now)


def test_two_hosts_of_one_ca_pass_and_get_the_names_qemu_needs(hosts):
    problems, info = check(hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2"))
    assert problems == []
    assert info == {"source_dn": "CN=hv1", "target_dn": "CN=hv2", "target_hostname": "127.0.0.2"}


def test_the_source_alone_gives_the_subject_the_targets_link_listener_admits(hosts, tmp_path):
    """Before the plan, the target's listener needs the source's client subject; a directory without a client
    certificate gives none (the plan, comparing both hosts, says why)."""
    assert _tlscert.host_client_dn("hv1", _tlsfiles.inspect(str(hosts("hv1", "127.0.0.1")))) == "CN=hv1"
    no_client = hosts("hv1", "127.0.0.1", ca="other", client=False)
    assert _tlscert.host_client_dn("hv1", _tlsfiles.inspect(str(no_client))) is None
    assert _tlscert.host_client_dn("hv1", None) is None


def test_an_ipv6_migration_address_is_checked_bare(hosts):
    problems, info = check(hosts("hv1", "::1"), hosts("hv2", "2001:db8::2"), address="[2001:DB8::2]")
    assert problems == [] and info["target_hostname"] == "2001:db8::2"


def test_a_migration_address_the_target_certificate_does_not_name(hosts, tmp_path):
    problems, info = check(hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2"), address="127.0.0.3")
    assert problems == [f"hv2: {tmp_path / 'hv2-ca-tls'}/server-cert.pem does not name the migration address "
                        "127.0.0.3 (it names IP:127.0.0.2, DNS:hv2): re-issue it (livemig.qemu.certificates) with "
                        "that address as livemig_migration_address"]
    assert info["source_dn"] == "CN=hv1"


def test_a_migration_address_that_is_a_dns_name_matches_the_certificates_dns_name(hosts):
    problems, info = check(hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2"), address="HV2")
    assert problems == [] and info["target_hostname"] == "HV2"


def test_certificates_of_different_cas(hosts):
    problems, _info = check(hosts("hv1", "127.0.0.1", ca="ca-a"), hosts("hv2", "127.0.0.2", ca="ca-b"))
    assert problems == ["hv1 and hv2 have different CA certificates (ca-cert.pem): issue both hosts' certificates "
                        "from one CA (livemig.qemu.certificates with one livemig_tls_ca_dir)"]


def test_a_certificate_not_signed_by_the_ca_the_peer_trusts(hosts, tmp_path):
    """hv2 trusts both CAs but shows a certificate of the one hv1 does not know."""
    source, target = hosts("hv1", "127.0.0.1", ca="ca-a"), hosts("hv2", "127.0.0.2", ca="ca-b")
    both = (tmp_path / "ca-b" / "ca-cert.pem").read_text() + (tmp_path / "ca-a" / "ca-cert.pem").read_text()
    (target / "ca-cert.pem").write_text(both)
    problems, _info = check(source, target)
    assert problems == [f"hv2: {target}/server-cert.pem is not signed by the CA of hv1's ca-cert.pem, so hv1 "
                        "refuses it: re-issue it (livemig.qemu.certificates)"]


def test_expired_and_not_yet_valid_certificates(hosts):
    source, target = hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2")
    now = datetime.datetime.now(datetime.timezone.utc)
    late, _info = check(source, target, now=now + 900 * DAY)
    assert [problem.split(" expired on ", maxsplit=1)[0] for problem in late] == [
        f"hv1: {source}/client-cert.pem", f"hv2: {target}/server-cert.pem"]
    late, _info = check(source, target, now=now + 4000 * DAY)
    assert len(late) == 4 and f"hv1: {source}/ca-cert.pem expired on" in late[1]
    early, _info = check(source, target, now=now - DAY)
    assert len(early) == 4 and all("is valid only from" in problem and problem.endswith("check the clocks")
                                   for problem in early)


def test_the_hosts_own_problems_come_first_and_missing_files_stop_the_comparison(hosts, tmp_path):
    source, target = hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2", server=False)
    os.chmod(source / "client-key.pem", 0o640)
    problems, info = check(source, target)
    assert problems == [
        f"hv1: {source}/client-key.pem has mode 0640, open to group or others: chmod 0600 {source}/client-key.pem",
        f"hv2: {target} lacks server-cert.pem, server-key.pem: {_tlsfiles.FIX}"]
    assert info == {"source_dn": "CN=hv1", "target_dn": None, "target_hostname": "127.0.0.2"}


@pytest.mark.parametrize("source_tls, target_tls, expected", [
    (None, None, ["hv1: no TLS directory was reported", "hv2: no TLS directory was reported"]),
    ({"dir": "/etc/livemig/tls", "exists": False, "problems": ["the TLS directory /etc/livemig/tls does not exist"]},
     {}, ["hv1: the TLS directory /etc/livemig/tls does not exist", "hv2: no TLS directory was reported"]),
    ({"dir": "/t", "exists": True, "problems": [], "ca_pem": "junk", "cert_pem": "junk", "client_cert_pem": "junk"},
     {"dir": "/t", "exists": True, "problems": ["/t lacks ca-cert.pem"], "ca_pem": None, "cert_pem": None,
      "client_cert_pem": None},
     ["hv1: a certificate in /t cannot be read (", "hv2: /t lacks ca-cert.pem"]),
])
def test_tls_problems_from_tables(source_tls, target_tls, expected):
    problems, info = _tlscert.tls_problems(source_tls, target_tls, "hv1", "hv2", "[::1]")
    assert [problem[:len(start)] for problem, start in zip(problems, expected)] == expected
    assert len(problems) == len(expected) and info == {"source_dn": None, "target_dn": None, "target_hostname": "::1"}


def test_a_client_subject_qemu_prints_as_hex_is_a_problem(hosts, tmp_path):
    source, target = hosts("hv1", "127.0.0.1"), hosts("hv2", "127.0.0.2")
    authority = _tlscert.ensure_ca(str(tmp_path / "ca"), False, datetime.datetime.now(datetime.timezone.utc), 30)
    odd = _tlscert.issue(authority, ec.generate_private_key(ec.SECP256R1()),
                         name((x509.ObjectIdentifier("2.5.4.97"), "x")), ("127.0.0.1",), (), 10,
                         datetime.datetime.now(datetime.timezone.utc))
    (source / "client-cert.pem").write_bytes(odd.public_bytes(serialization.Encoding.PEM))
    problems, info = check(source, target)
    assert problems == [f"hv1: {source}/client-cert.pem: the subject attribute 2.5.4.97 is one QEMU names by its "
                        "DER value: use a subject of CN, O, OU, C, L, ST or DC"]
    assert info["source_dn"] is None and info["target_dn"] == "CN=hv2"
