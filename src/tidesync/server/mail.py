"""Delivering confirmation and password-reset messages: the pluggable :class:`Sender`.

The email/password provider never talks to a mail server itself: it hands a :class:`Mail` to
the configured sender. Three come with tidesync:

* :class:`LogSender` (``sender = "log"``, the default): writes the message, token included, to
  the server log (logger ``tidesync.server.mail``). For development; never a password.
* :class:`SmtpSender` (``sender = "smtp"``): sends a plain-text email with ``smtplib``
  (STARTTLS or implicit TLS), its password read from an environment variable.
* ``sender = "package.module:name"``: any object with a ``send(mail)`` method, or a callable
  that returns one when called with no argument.

A sender runs in a worker thread; if it raises, the error is logged and the client is told
nothing (it must not learn whether an address has an account).
"""

from __future__ import annotations

import importlib
import logging
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol, runtime_checkable

from ..errors import UsageError

__all__ = ["Mail", "MailKind", "Sender", "LogSender", "SmtpSender", "SmtpConfig", "load_sender"]

log = logging.getLogger("tidesync.server.mail")

MailKind = Literal["confirm", "reset", "account_exists"]

_SUBJECTS: dict[str, str] = {
    "confirm": "Confirm your email address",
    "reset": "Reset your password",
    "account_exists": "You already have an account",
}


@dataclass(frozen=True)
class Mail:
    """One message to one (validated, normalized) address.

    Attributes:
        kind: ``confirm`` (a confirmation token), ``reset`` (a password-reset token) or
            ``account_exists`` (someone tried to register an address that has an account;
            no token).
        to: the address.
        app_id: the app's id.
        token: the single-use token (None for ``account_exists``).
        url: the configured ``confirm_url`` / ``reset_url`` with ``{token}`` filled in, if any.
        expires_in: seconds the token stays valid.
    """

    kind: MailKind
    to: str
    app_id: str
    token: str | None = None
    url: str | None = None
    expires_in: int = 0

    @property
    def subject(self) -> str:
        return f"[{self.app_id}] {_SUBJECTS[self.kind]}"

    @property
    def text(self) -> str:
        """A plain-text body."""
        if self.kind == "account_exists":
            return ("Someone (perhaps you) tried to register this address again. You already have an "
                    "account: log in, or reset your password if you forgot it.\n")
        what = "confirm your email address" if self.kind == "confirm" else "choose a new password"
        link = self.url or f"the token {self.token}"
        hours = max(1, self.expires_in // 3600)
        return (f"To {what}, use {link}\nwithin {hours} hour(s). If you did not ask for this, "
                "ignore this message.\n")

    def __repr__(self) -> str:  # tokens stay out of reprs
        return f"Mail({self.kind!r}, to={self.to!r})"


@runtime_checkable
class Sender(Protocol):
    """Delivers :class:`Mail`. Called from a worker thread; may block."""

    def send(self, mail: Mail) -> None: ...


class LogSender:
    """Development sender: logs each message, token and link included, at WARNING level."""

    def send(self, mail: Mail) -> None:
        log.warning("mail for %s (%s): token %s%s", mail.to, mail.kind, mail.token or "-",
                    f" url {mail.url}" if mail.url else "")


@dataclass
class SmtpConfig:
    """``[auth.email_password.smtp]``.

    Attributes:
        host, port: the mail server (port 587 with ``starttls``, 465 with ``tls``).
        sender: the From address.
        username: the login, if the server needs one.
        password_env: the environment variable holding the password (never the file).
        security: ``starttls`` (default), ``tls`` or ``none`` (a local relay only).
        timeout: seconds.
    """

    host: str = "localhost"
    port: int = 587
    sender: str = "no-reply@localhost"
    username: str | None = None
    password_env: str | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    timeout: float = 10.0


class SmtpSender:
    """Sends :class:`Mail` as plain-text email over SMTP."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, mail: Mail) -> None:
        cfg = self.config
        msg = EmailMessage()  # header values with CR/LF are refused by the email package
        msg["From"] = cfg.sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg.set_content(mail.text)
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if cfg.security == "tls":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        with smtp:
            if cfg.security == "starttls":
                smtp.starttls(context=context)
            if cfg.username:
                password = os.environ.get(cfg.password_env or "", "")
                smtp.login(cfg.username, password)
            smtp.send_message(msg)


def load_sender(spec: str | Sender, smtp: SmtpConfig | None = None) -> Sender:
    """The sender named by ``spec``: ``"log"``, ``"smtp"``, ``"module:name"`` or a sender.

    Raises:
        UsageError: the name cannot be imported or is not a sender.
    """
    if not isinstance(spec, str):
        return spec
    if spec == "log":
        return LogSender()
    if spec == "smtp":
        return SmtpSender(smtp or SmtpConfig())
    if ":" not in spec:
        raise UsageError(f"unknown mail sender {spec!r}: use 'log', 'smtp' or 'package.module:name'")
    module_name, attr = spec.split(":", 1)
    try:
        obj: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import the mail sender {spec!r}: {exc}") from exc
    if isinstance(obj, type) or (not isinstance(obj, Sender) and callable(obj)):
        obj = obj()
    if not isinstance(obj, Sender):
        raise UsageError(f"the mail sender {spec!r} has no send(mail) method")
    return obj
