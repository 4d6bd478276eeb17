"""Core settings, read from the environment with the ``NULLSPEND_`` prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NULLSPEND_", extra="ignore")

    pricing_file: Path | None = None
    """A JSON file of pricing overrides: private or fine-tuned models, negotiated prices."""

    api_key: SecretStr | None = None
    """The SDK's key for a NullSpend server (``ns_live_sk_...``)."""

    base_url: str | None = None
    """The NullSpend server the SDK talks to; with none, integrations run embedded."""
