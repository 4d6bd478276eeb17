"""Server settings, from the environment (``NULLSPEND_*``) or the command line."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    # Out of range, a value is refused at start: a heartbeat of 0 spins and takes every call in
    # flight for abandoned, a TTL of 0 expires reservations as they are made, and so on.
    model_config = SettingsConfigDict(env_prefix="NULLSPEND_", extra="ignore", allow_inf_nan=False)

    database_url: str = "sqlite:///./nullspend.db"
    """SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``."""
    host: str = "127.0.0.1"
    port: int = 8787
    workers: int = 1
    api_version: str = "2026-04-01"
    """The API version reported by introspection and the NullSpend-Version header."""
    key_cache_seconds: float = 2.0
    """How long an authenticated key is trusted before it is looked up again (revocation delay)."""
    reservation_ttl_seconds: int = Field(default=600, gt=0)
    """A reservation not settled within this time is settled at its estimate."""
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often a server process marks itself alive, so others can recover its reservations."""

    # The proxy
    openai_upstream: str = "https://api.openai.com"
    anthropic_upstream: str = "https://api.anthropic.com"
    upstream_allowlist: list[str] = []
    """Upstreams a request may pick with X-NullSpend-Upstream (exact base URLs)."""
    upstream_timeout_seconds: float = Field(default=600.0, gt=0)
    """How long to wait for an upstream to connect and to send each chunk."""
    deny_unpriced: bool = False
    """Deny requests for models the pricing catalog does not know (else: forwarded, recorded at
    the estimate and tagged _ns_unpriced)."""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    rate_limit_per_minute: int = Field(default=600, gt=0)
    """Requests per minute per API key: proxied calls and reservations, counted together."""
