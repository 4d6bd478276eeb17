"""Attribution inputs and their rules: tags, customer ids, session ids and model names.

Tags: at most 10 keys; a key is 1-64 characters of ``[a-zA-Z0-9_-]`` not starting with ``_ns_``
(reserved for system tags such as ``_ns_estimated``); a value is a string of at most 256
characters. A customer id is at most 256 characters of ``[a-zA-Z0-9._:-]``; a session id and a
model name 1-256 characters; a provider, trace id, event type and action id at most 64, a service
tier at most 32. No text may hold what a database cannot store (``unstorable``). The server's
request bodies and the embedded engine both check these, so they refuse alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_TAGS = 10
MAX_TAG_VALUE = 256
MAX_CUSTOMER = 256
MAX_SESSION = 256
MAX_MODEL = 256
MAX_PROVIDER = 64
MAX_TRACE_ID = 64
MAX_EVENT_TYPE = 64
MAX_ACTION_ID = 64
MAX_SERVICE_TIER = 32
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


def tags_with_customer(tags: Mapping[str, str], customer: str | None) -> dict[str, str]:
    """``tags`` with the call's customer as tag ``customer`` (unless they name one): attribution
    by customer and by tag share one mechanism, and a tag budget on ``customer=<id>`` counts
    that customer's calls."""
    return {"customer": customer, **tags} if customer else dict(tags)


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


def tag_entity_errors(entity_id: str) -> list[str]:
    """Everything wrong with a tag budget's entity id, ``key=value`` (empty when it is valid)."""
    key, sep, value = entity_id.partition("=")
    if not sep:
        return ["a tag budget's entity id is key=value"]
    return tag_errors({key: value})


def text_error(name: str, text: object, most: int, *, least: int = 0) -> str | None:
    """Why ``text`` is no ``name`` that is kept, if it is not: a string of ``least`` to ``most``
    characters that a database can store."""
    if isinstance(text, str) and least <= len(text) <= most and not unstorable(text):
        return None
    size = f"{least}-{most}" if least else f"at most {most}"
    return f"{name} must be a string of {size} characters, with no NUL or lone surrogate"


def session_error(session_id: object) -> str | None:
    return text_error("session id", session_id, MAX_SESSION, least=1)


def model_error(model: object) -> str | None:
    return text_error("model", model, MAX_MODEL, least=1)
