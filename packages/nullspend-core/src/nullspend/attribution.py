"""Attribution inputs and their rules: tags, customer ids and session ids.

Tags: at most 10 keys; a key is 1-64 characters of ``[a-zA-Z0-9_-]`` not starting with ``_ns_``
(reserved for system tags such as ``_ns_estimated``); a value is a string of at most 256
characters without NUL. A customer id is at most 256 characters of ``[a-zA-Z0-9._:-]``; a
session id at most 256 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_TAGS = 10
MAX_TAG_VALUE = 256
MAX_CUSTOMER = 256
MAX_SESSION = 256
RESERVED_TAG_PREFIX = "_ns_"
TAG_KEY_PATTERN = r"[a-zA-Z0-9_-]{1,64}"
CUSTOMER_PATTERN = r"[a-zA-Z0-9._:-]{1,256}"
_TAG_KEY = re.compile(TAG_KEY_PATTERN)
_CUSTOMER = re.compile(CUSTOMER_PATTERN)

# System tags, written by NullSpend itself.
TAG_ESTIMATED = "_ns_estimated"
TAG_CANCELLED = "_ns_cancelled"
TAG_NO_USAGE = "_ns_no_usage"
TAG_UNPRICED = "_ns_unpriced"
TAG_RECOVERED = "_ns_recovered"
TAG_EXPIRED = "_ns_expired"


def tag_errors(tags: object) -> list[str]:
    """Everything wrong with user-supplied tags (empty when they are valid)."""
    if not isinstance(tags, Mapping):
        return ["tags must be a JSON object of string values"]
    errors = []
    if len(tags) > MAX_TAGS:
        errors.append(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or _TAG_KEY.fullmatch(key) is None:
            errors.append(f"tag key {key!r} must be 1-64 characters of [a-zA-Z0-9_-]")
        elif key.startswith(RESERVED_TAG_PREFIX):
            errors.append(f"tag key {key!r} is reserved: keys starting with _ns_ are NullSpend's")
        if not isinstance(value, str):
            errors.append(f"tag {key!r} must have a string value")
        elif len(value) > MAX_TAG_VALUE or "\x00" in value:
            errors.append(f"tag {key!r} value must be at most {MAX_TAG_VALUE} characters, no NUL")
    return errors


def customer_error(customer: object) -> str | None:
    if not isinstance(customer, str) or _CUSTOMER.fullmatch(customer) is None:
        return f"customer id must be 1-{MAX_CUSTOMER} characters of [a-zA-Z0-9._:-]"
    return None


def session_error(session_id: object) -> str | None:
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION:
        return f"session id must be 1-{MAX_SESSION} characters"
    return None
