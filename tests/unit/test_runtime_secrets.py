"""A gateway without usable secrets refuses to start, naming the setting to fix."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from stepguard.config.load import load_config
from stepguard.core.errors import ConfigError
from stepguard.service.runtime import build_runtime

KEY = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(("section", "path", "words"), [
    (f'{{cookie_key: "", totp_keys: {{k1: "{KEY}"}}, totp_current: k1}}',
     "secrets.cookie_key", "expected a secret key"),
    (f'{{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{KEY}"}}, '
     "totp_current: k2}", "secrets.totp_keys", "totp_current naming one"),
    (f'{{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{}}, totp_current: k1}}',
     "secrets.totp_keys", "at least one base64 32-byte key"),
])
def test_missing_secrets_stop_the_start(tmp_path: Path, section: str, path: str,
                                        words: str) -> None:
    (tmp_path / "policy.yaml").write_text("default: {level: aal1}\n")
    (tmp_path / "stepguard.yaml").write_text(
        f'policy: policy.yaml\nstore: {{url: "sqlite:///x.db"}}\nsecrets: {section}\n')
    with pytest.raises(ConfigError) as refused:
        build_runtime(load_config(tmp_path / "stepguard.yaml"))
    assert f"at {path}:" in str(refused.value) and words in str(refused.value)
