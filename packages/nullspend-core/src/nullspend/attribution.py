"""Attribution inputs and their rules: tags, customer ids, session ids and model names.

Tags: at most 10 keys; a key is 1-64 characters of ``[a-zA-Z0-9_-]`` not starting with ``_ns_``
(reserved for system tags such as ``_ns_estimated``); a value is a string of at most 256
characters. A customer id is at most 256 characters of ``[a-zA-Z0-9._:-]``; a session id and a
model name 1-256 characters. No text may hold what a database cannot store (``unstorable``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_TAGS = 10
MAX_TAG_VALUE = 256
MAX_CUSTOMER = 256
MAX_SESSION = 256
MAX_MODEL = 256
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


def unstorable(text: str) -> bool:
    """Text a database cannot hold: a NUL (PostgreSQL refuses it in text) or a lone surrogate
    (which no UTF-8 encodes; JSON's ``\\ud800`` escapes carry them)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


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
        elif len(value) > MAX_TAG_VALUE or unstorable(value):
            errors.append(
                f"tag {key!r} value must be at most {MAX_TAG_VALUE} characters, with no NUL or "
                "lone surrogate"
            )
    return errors


def customer_error(customer: object) -> str | None:
    if not isinstance(customer, str) or _CUSTOMER.fullmatch(customer) is None:
        return f"customer id must be 1-{MAX_CUSTOMER} characters of [a-zA-Z0-9._:-]"
    return None


def session_error(session_id: object) -> str | None:
    if (
        not isinstance(session_id, str)
        or not 1 <= len(session_id) <= MAX_SESSION
        or unstorable(session_id)
    ):
        return f"session id must be 1-{MAX_SESSION} characters, with no NUL or lone surrogate"
    return None


def model_error(model: object) -> str | None:
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL or unstorable(model):
        return f"model must be 1-{MAX_MODEL} characters, with no NUL or lone surrogate"
    return None
