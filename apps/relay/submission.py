"""The submission listeners: port 587 style (STARTTLS required before AUTH and MAIL) and,
optionally, port 465 style (implicit TLS). Authenticated users send mail here, to local
and remote recipients; policy lives in apps.relay.services.submission, this module maps it
to SMTP replies."""

from __future__ import annotations

import logging
import warnings
from email.utils import format_datetime
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, LoginPassword, Session
from django.conf import settings
from django.utils import timezone

from apps.core.addresses import parse_address
from apps.mailboxes import services as mail_services
from apps.mailboxes.services import RecipientStatus
from apps.relay import services
from apps.relay.metrics import SMTP_MESSAGES
from apps.relay.smtp import (
    BARE_LINE_ENDING,
    CONTROL_CHARS,
    MAX_HOPS,
    RCPT_REPLIES,
    HardenedSMTP,
    _helo_label,
    _is_utf8,
    _mail_size,
    hop_count,
    recipient_limit_problem,
    run_db,
    sender_syntax_problem,
)

logger = logging.getLogger(__name__)

LOCKED_OUT = "454 4.7.0 Too many failed logins; try again later"


def _login_text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


class SubmissionSMTP(HardenedSMTP):
    """HardenedSMTP whose AUTH checks credentials off the event loop (the database and
    the password hash are slow), through the shared lockout policy."""

    _pending: LoginPassword | None = None

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; keep the credentials for the async check.
        self._pending = auth_data
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, parsed: AuthResult) -> AuthResult:
        credentials, self._pending = self._pending, None
        if credentials is None or credentials is MISSING:
            return parsed  # the exchange failed before credentials were complete
        username = _login_text(credentials.login).strip().lower()
        password = _login_text(credentials.password)
        ip = self.session.peer[0] if self.session and self.session.peer else None
        outcome = await run_db(_check_login, username=username, password=password, ip=ip)
        if outcome == "locked":
            return AuthResult(success=False, handled=False, message=LOCKED_OUT)
        if outcome is None:
            return AuthResult(
                success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
            )
        return AuthResult(success=True, auth_data=outcome)


def _check_login(*, username: str, password: str, ip: str | None) -> services.Sender | str | None:
    """The lockout policy shared with the web login: a locked-out name or address never
    gets its password checked."""
    from apps.accounts import lockout

    if lockout.lockout_remaining(username=username, ip=ip):
        return "locked"
    sender = services.submission_authenticate(username=username, password=password, ip=ip)
    if sender is None:
        locked = lockout.lockout_record_failure(username=username, ip=ip, channel="smtp")
        return "locked" if locked else None
    lockout.lockout_record_success(username=username, ip=ip, channel="smtp")
    return sender


def received_header(*, session: Session, envelope: Envelope, queue_id: str, sender: services.Sender) -> bytes:
    """Trace header for authenticated mail (RFC 3848 ESMTPSA). With
    A3_SUBMISSION_HIDE_CLIENT_IP the client's name and address are left out: they
    reveal a user's whereabouts and add nothing to delivery."""
    protocol = "UTF8SMTPSA" if envelope.smtp_utf8 else "ESMTPSA"
    origin = ""
    if not settings.A3_SUBMISSION_HIDE_CLIENT_IP:
        peer_ip = session.peer[0] if session.peer else "unknown"
        origin = f"from {_helo_label(session)} ([{peer_ip}])\r\n\t"
    recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
    return (
        f"Received: {origin}by {settings.A3_HOSTNAME} (A3Mailer) with {protocol} id {queue_id}{recipient};\r\n"
        f"\t{format_datetime(timezone.now())}\r\n"
    ).encode()


class SubmissionHandler:
    """aiosmtpd handler for submission: authenticated senders only, to any recipient."""

    async def handle_exception(self, error: Exception) -> str:
        logger.exception("submission session failed", exc_info=error)
        return "451 4.3.0 Temporary failure, try again later"

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        sender = await run_db(services.sender_refresh, sender=session.auth_data)
        if sender is None:
            return "550 5.7.1 This mailbox may not send mail now"
        session.auth_data = sender
        problem = sender_syntax_problem(envelope, address)
        if problem:
            return problem
        if address in ("", "<>") or not services.sender_allowed(sender, address):
            return f"553 5.7.1 You may not send as <{address[:200]}>"
        problem = await run_db(services.rate_limit_problem, sender=sender)
        if problem:
            return problem
        envelope.mail_from = parse_address(address).value
        envelope.mail_options.extend(mail_options)
        envelope.a3_size = _mail_size(mail_options)  # type: ignore[attr-defined]
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        problem = recipient_limit_problem(envelope, address)
        if problem:
            return problem
        if CONTROL_CHARS.search(address) or not _is_utf8(address):
            return "501 5.1.3 Bad recipient address syntax"
        verdict = await run_db(
            mail_services.recipient_check, address=address, size=getattr(envelope, "a3_size", None)
        )
        if verdict.status not in (RecipientStatus.LOCAL, RecipientStatus.NOT_LOCAL):
            return RCPT_REPLIES[verdict.status]
        if verdict.address in envelope.rcpt_tos:
            return "250 2.1.5 Recipient OK (duplicate ignored)"
        problem = await run_db(
            services.rate_limit_problem, sender=session.auth_data, recipients=len(envelope.rcpt_tos) + 1
        )
        if problem:
            return problem
        envelope.rcpt_tos.append(verdict.address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        sender: services.Sender = session.auth_data
        content: bytes = envelope.original_content or b""
        if BARE_LINE_ENDING.search(content):
            SMTP_MESSAGES.labels(outcome="bare_line_ending").inc()
            return "550 5.6.0 Bare CR or LF in message; lines must end with CRLF (RFC 5321 2.3.8)"
        if hop_count(content) > MAX_HOPS:
            return "554 5.4.6 Too many hops: mail loop detected (RFC 5321 6.3)"
        problem = services.header_from_problem(sender, content)
        if problem:
            return problem
        queue_id = mail_services.new_queue_id()
        trace = received_header(session=session, envelope=envelope, queue_id=queue_id, sender=sender)
        try:
            await run_db(
                services.submission_accept,
                sender=sender,
                mail_from=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                raw=content,
                trace=trace,
                queue_id=queue_id,
            )
        except services.SubmissionRefused as exc:
            return exc.reply
        except Exception:
            logger.exception("could not store submitted message %s", queue_id)
            SMTP_MESSAGES.labels(outcome="temporary_failure").inc()
            return "451 4.3.0 Temporary failure storing the message, try again later"
        SMTP_MESSAGES.labels(outcome="submitted").inc()
        return f"250 2.0.0 Ok: queued as {queue_id}"


def make_submission_factory(*, tls_context: Any, implicit_tls: bool) -> Any:
    handler = SubmissionHandler()

    def factory() -> SubmissionSMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without its own TLS requirement; with implicit TLS
            # the whole connection is encrypted before it sees a byte.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            return _build()

    def _build() -> SubmissionSMTP:
        return SubmissionSMTP(
            handler,
            max_per_ip=settings.A3_SMTP_MAX_CONNECTIONS_PER_IP,
            max_errors=settings.A3_SMTP_MAX_ERRORS,
            data_size_limit=settings.A3_MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.A3_HOSTNAME,
            ident="A3Mailer ESMTP Submission",
            # With implicit TLS the whole session is encrypted before aiosmtpd sees it;
            # aiosmtpd's own STARTTLS bookkeeping is then told so via _tls_protocol.
            tls_context=None if implicit_tls else tls_context,
            require_starttls=not implicit_tls,
            auth_required=True,
            auth_require_tls=not implicit_tls,
            auth_exclude_mechanism=["CRAM-MD5", "XOAUTH2"],
            timeout=settings.A3_SMTP_TIMEOUT_SECONDS,
        )

    return factory
