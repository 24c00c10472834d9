"""The compliance report: ledger evidence mapped to PCI DSS v4.0.1, OWASP ASVS 5.0, NIST SP
800-63B rev 4 and GDPR, as HTML (and PDF through headless Chromium)."""
