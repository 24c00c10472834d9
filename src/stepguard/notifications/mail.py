"""Security notices by email (SMTP with STARTTLS, implicit TLS, or a local relay)."""

from __future__ import annotations

import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from stepguard.config.schema import EmailChannel
from stepguard.notifications.notice import Notice


def message(notice: Notice, *, sender: str, to: list[str], portal: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail["Subject"] = f"[Stepguard] {notice.title}"
    mail["Date"] = format_datetime(datetime.fromtimestamp(notice.at, UTC))
    mail["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(notice.text() + f"\nYour account page: {portal.rstrip('/')}/account\n")
    return mail


def send(settings: EmailChannel, mail: EmailMessage) -> None:
    """Send one message; raises `smtplib.SMTPException` or `OSError` on failure."""
    context = ssl.create_default_context()
    if settings.security == "tls":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port,
                                              timeout=settings.timeout, context=context)
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout)
    with smtp:
        if settings.security == "starttls":
            smtp.starttls(context=context)
        if settings.username:
            smtp.login(settings.username, settings.password)
        smtp.send_message(mail)
