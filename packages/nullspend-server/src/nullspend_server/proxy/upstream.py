"""The HTTP client the proxy forwards with.

aiohttp rather than httpx on this one path: with its C parser a bare pass-through proxy adds
0.85 ms per call against 2.6 ms with httpx (benchmarks/README.md), and the proxy's budget is
about a millisecond.
"""

from __future__ import annotations

import aiohttp

from nullspend_server.settings import ServerSettings

# What a failed upstream call raises: connection errors, and timeouts (connect or per chunk).
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)
# Of those, the ones raised before the request went out (no connection, DNS, TLS, no free
# connection within the connect timeout): the provider never had it. After it went out (a read
# timeout, the connection dropped before the answer), it may run the call, and bill it.
NOT_SENT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


def upstream_session(settings: ServerSettings) -> aiohttp.ClientSession:
    """One pooled session per process; call from the running event loop."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, connect=10.0, sock_read=settings.upstream_timeout_seconds
        ),
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300),
        # Users share this session: a provider's cookies must never travel to another caller.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Headers are the client's own: add none (aiohttp would add a User-Agent).
        skip_auto_headers=("User-Agent",),
    )
