"""Certificate lifetimes: a self-signed certificate is renewed before it runs out, a user's is warned about."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

RENEW_WITHIN = timedelta(days=30)
NOT_DUE = "renewal=not-due"


class CertificateError(ValueError):
    """A certificate from hosts.toml that can't be used: the message names the file."""


def inspect_command(certificate: str) -> str:
    """Shell for the tls fact, one openssl run: the sha256 fingerprint, the end date, and NOT_DUE while the certificate outlives RENEW_WITHIN."""
    seconds = int(RENEW_WITHIN.total_seconds())
    return f"openssl x509 -in {certificate} -noout -fingerprint -sha256 -enddate -checkend {seconds} && echo {NOT_DUE}"


def renewal_due(tls_fact: str) -> bool:
    return NOT_DUE not in tls_fact.splitlines()


def not_after(tls_fact: str) -> str:
    line = next((line for line in tls_fact.splitlines() if line.startswith("notAfter=")), "")
    return line.partition("=")[2] or "an unreadable date"


def user_certificate_warning(path: str, now: datetime | None = None) -> str:
    """'' for a certificate good for more than RENEW_WITHIN; a warning when it runs out sooner.

    Raises CertificateError when it is not a PEM certificate or has expired: clients would refuse it.
    """
    from cryptography import x509  # only with a certificate of the user's: `fab -l` doesn't pay for it

    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise CertificateError(f"tls_certificate {path} is not a readable PEM certificate ({error})") from None
    now = now or datetime.now(timezone.utc)
    expires = certificate.not_valid_after_utc
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    if expires <= now:
        raise CertificateError(f"tls_certificate {path} expired on {when}: clients refuse it. "
                               f"Renew it (same path, or point tls_certificate and tls_key at the new files) and run setup-tracking again")
    if expires - now <= RENEW_WITHIN:
        days = (expires - now).days
        return (f"tls_certificate {path} expires on {when}, in {days} day{'s' if days != 1 else ''}: "
                f"renew it and run setup-tracking again before then")
    return ""
