"""Security notices to users and operators: email, signed webhooks, syslog / JSON lines."""

from stepguard.notifications.notice import Notice, notice_for
from stepguard.notifications.notifier import Notifier
from stepguard.notifications.webhook import sign_webhook, verify_webhook

__all__ = ["Notice", "Notifier", "notice_for", "sign_webhook", "verify_webhook"]
