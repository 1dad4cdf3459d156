"""Email addresses: validated strictly and normalized before they are stored or used.

An address is accepted only in the plain ``local@domain`` form (RFC 5322 dot-atom, no quoted
local parts, no comments, no IP literals, no display names), so nothing that could inject a
mail header (CR, LF), a second recipient (``,`` ``;`` ``<``), a quote or a control character
ever reaches storage, logs or an email. Normalized form: Unicode NFC, surrounding blanks
removed, the whole address lower-cased (so ``Alice@Example.COM`` and ``alice@example.com``
are one account), the domain in its ASCII (IDNA) form.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import UsageError

__all__ = ["normalize_email", "InvalidEmailError", "MAX_EMAIL_LENGTH"]

MAX_EMAIL_LENGTH = 254
_ATEXT_SPECIALS = set("!#$%&'*+-/=?^_`{|}~")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class InvalidEmailError(UsageError):
    """Not an email address tidesync accepts (HTTP 400, code ``invalid_email``)."""

    code = "invalid_email"


def normalize_email(raw: object) -> str:
    """The normalized form of an email address.

    Raises:
        InvalidEmailError: not a string, or not a plain ``local@domain`` address.
    """
    if not isinstance(raw, str):
        raise InvalidEmailError("the email must be a string")
    text = unicodedata.normalize("NFC", raw).strip(" \t")
    if not text or len(text) > MAX_EMAIL_LENGTH:
        raise InvalidEmailError(f"an email address has 3 to {MAX_EMAIL_LENGTH} characters")
    if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in text) or " " in text:
        raise InvalidEmailError("an email address may not contain blanks or control characters")
    if text.count("@") != 1:
        raise InvalidEmailError("an email address has exactly one @")
    local, domain = text.split("@")
    if not 1 <= len(local) <= 64:
        raise InvalidEmailError("the part before @ must have 1 to 64 characters")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidEmailError("the part before @ may not start or end with a dot or hold two in a row")
    for c in local:
        if not (c == "." or c in _ATEXT_SPECIALS or c.isalnum()):
            raise InvalidEmailError(f"the part before @ may not contain {c!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidEmailError("the domain is not a valid host name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise InvalidEmailError("the domain is not a valid host name (like example.com)")
    address = f"{local.lower()}@{ascii_domain}"
    if len(address) > MAX_EMAIL_LENGTH:
        raise InvalidEmailError(f"an email address has at most {MAX_EMAIL_LENGTH} characters")
    return address
