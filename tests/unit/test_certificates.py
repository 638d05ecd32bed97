"""Certificate lifetimes: when a self-signed certificate is renewed, and what a user's certificate gets told."""

import dataclasses
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from invoke.exceptions import Exit

from tasks.inventory import Host, TrackingSettings
from tasks.tracking import certificates, frontdoor
from tasks.tracking.server import check_user_certificates

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def certificate_file(path, not_after: datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlflow.example.org")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_after - timedelta(days=400)).not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def tls_fact_on(path) -> str:
    """The tls fact's openssl part, run by bash and openssl as on a host."""
    return subprocess.run(["bash", "-c", certificates.inspect_command(str(path))], capture_output=True, text=True).stdout


def test_the_fact_says_when_a_certificate_is_due_for_renewal(tmp_path):
    now = datetime.now(timezone.utc)
    soon = tls_fact_on(certificate_file(tmp_path / "soon.pem", now + timedelta(days=5)))
    later = tls_fact_on(certificate_file(tmp_path / "later.pem", now + timedelta(days=60)))
    assert certificates.renewal_due(soon) and not certificates.renewal_due(later)
    assert certificates.not_after(later).endswith("GMT") and frontdoor.fingerprint(later).count(":") == 31
    assert certificates.renewal_due(tls_fact_on(tmp_path / "missing.pem"))


def door() -> frontdoor.FrontDoor:
    return frontdoor.FrontDoor(Host(name="prod1", address="10.0.0.5"), "10.0.0.5")


def self_signed_fact(not_due: bool) -> str:
    lines = [
        f"{'a' * 64}  {frontdoor.CERTIFICATE}", f"{'b' * 64}  {frontdoor.KEY}",
        "sha256 Fingerprint=AA:BB", "notAfter=Dec  9 12:00:00 2026 GMT",
    ]
    return "\n".join(lines + ([certificates.NOT_DUE] if not_due else []))


def test_a_self_signed_certificate_is_renewed_within_30_days_and_kept_otherwise():
    (kept,) = frontdoor.certificate_steps(door(), self_signed_fact(not_due=True))
    assert not kept.changed and "AA:BB" in kept.summary and "Dec  9 12:00:00 2026" in kept.summary
    (renewed,) = frontdoor.certificate_steps(door(), self_signed_fact(not_due=False))
    assert renewed.changed and renewed.name == "tls certificate"
    assert "expires Dec  9 12:00:00 2026 GMT (within 30 days): renew" in renewed.summary
    assert renewed.script == frontdoor.self_signed_script(door())


def test_a_user_certificate_far_from_expiry_says_nothing(tmp_path):
    assert certificates.user_certificate_warning(str(certificate_file(tmp_path / "c.pem", NOW + timedelta(days=90))), NOW) == ""


def test_a_user_certificate_that_expires_within_30_days_gets_a_warning_naming_it(tmp_path):
    path = certificate_file(tmp_path / "c.pem", NOW + timedelta(days=10, hours=1))
    warning = certificates.user_certificate_warning(str(path), NOW)
    assert warning == f"tls_certificate {path} expires on 2026-12-09 13:00 UTC, in 10 days: renew it and run setup-tracking again before then"


def test_an_expired_or_unreadable_user_certificate_is_an_error_naming_it(tmp_path):
    expired = certificate_file(tmp_path / "old.pem", NOW - timedelta(days=1))
    with pytest.raises(certificates.CertificateError, match=f"tls_certificate {expired} expired on 2026-11-28 12:00 UTC"):
        certificates.user_certificate_warning(str(expired), NOW)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(certificates.CertificateError, match="junk.pem is not a readable PEM certificate"):
        certificates.user_certificate_warning(str(tmp_path / "junk.pem"), NOW)


def test_setup_tracking_stops_before_connecting_on_an_expired_certificate(tmp_path, capsys):
    expired = certificate_file(tmp_path / "old.pem", datetime.now(timezone.utc) - timedelta(days=1))
    soon = certificate_file(tmp_path / "soon.pem", datetime.now(timezone.utc) + timedelta(days=3))
    host = Host(name="prod1", address="127.0.0.1", tracking=TrackingSettings(tls_certificate=str(soon), tls_key=str(soon)))
    check_user_certificates([host])
    assert f"tls_certificate {soon} expires on" in capsys.readouterr().out
    old = dataclasses.replace(host, tracking=dataclasses.replace(host.tracking, tls_certificate=str(expired)))
    with pytest.raises(Exit) as stopped:
        check_user_certificates([old])
    assert stopped.value.code == 2 and f"tls_certificate {expired} expired" in stopped.value.message
