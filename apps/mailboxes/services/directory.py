"""The mail directory: domains, mailboxes and aliases, with their validation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.db.models import QuerySet

from apps.accounts import services as account_services
from apps.accounts.models import User
from apps.alerts.services import emit
from apps.core.addresses import Address, normalize_domain, parse_address
from apps.core.audit import audit, audit_changes, snapshot
from apps.core.exceptions import (
    ApplicationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from apps.mailboxes.models import (
    DEFAULT_FOLDERS,
    Alias,
    AliasDestination,
    Domain,
    Folder,
    Mailbox,
    MailItem,
)
from apps.mailboxes.services.mailitems import DeletionHeld, remove_mail_items

MAX_ALIAS_DEPTH = 16
MAX_ALIAS_DESTINATIONS = 500


class AliasLoop(ApplicationError):
    code = "alias_loop"


# --- Access ----------------------------------------------------------------------------


def _require_manage(actor: User, domain: Domain) -> None:
    """Raise unless the actor may change this domain's mailboxes and aliases.

    Out-of-scope domains answer like missing ones, so nobody learns they exist."""
    if Domain.objects.manageable_by(actor).filter(pk=domain.pk).exists():
        return
    if Domain.objects.visible_to(actor).filter(pk=domain.pk).exists():
        raise PermissionDeniedError("You may not change this domain.")
    raise NotFoundError(f"No domain {domain.name_unicode}.")


def _require_superadmin(actor: User, what: str) -> None:
    if not actor.is_superadmin:
        raise PermissionDeniedError(f"Only a superadmin can {what}.")


def _local_domain_for(address: Address, *, actor: User, field_name: str) -> Domain:
    domain = Domain.objects.filter(name=address.domain).first()
    if domain is None or not Domain.objects.visible_to(actor).filter(pk=domain.pk).exists():
        message = f"{address.domain} is not a domain hosted here."
        raise NotFoundError(message, code="unknown_domain", fields={field_name: [message]})
    _require_manage(actor, domain)
    return domain


def _address_taken(address: str, *, exclude_alias: Alias | None = None) -> str | None:
    if Mailbox.objects.filter(address=address).exists():
        return "a mailbox"
    aliases = Alias.objects.filter(address=address)
    if exclude_alias is not None:
        aliases = aliases.exclude(pk=exclude_alias.pk)
    if aliases.exists():
        return "an alias"
    return None


def _require_address_free(address: Address) -> None:
    taken = _address_taken(address.value)
    if taken:
        raise ConflictError(
            f"{address.display} is already used by {taken}.",
            code="duplicate",
            fields={"address": [f"Already used by {taken}."]},
        )


def _lock_domain_with_room(domain: Domain, *, kind: str) -> Domain:
    """Lock the domain row, so concurrent creates cannot both slip under its limit, and
    check there is room for one more of `kind` ("mailboxes" or "aliases")."""
    domain = Domain.objects.select_for_update().get(pk=domain.pk)
    limit = domain.max_mailboxes if kind == "mailboxes" else domain.max_aliases
    if limit and getattr(domain, kind).count() >= limit:
        raise ConflictError(
            f"{domain.name_unicode} already has its maximum of {limit} {kind}.",
            code="domain_limit_reached",
        )
    return domain


def _check_quota(value: int | None, *, field_name: str = "quota_bytes") -> None:
    if value is not None and value < 0:
        raise ApplicationError(
            "Quota cannot be negative.", fields={field_name: ["Must be 0 (no limit) or more."]}
        )


# --- Domains ---------------------------------------------------------------------------


@transaction.atomic
def domain_create(
    *,
    actor: User,
    name: str,
    description: str = "",
    is_active: bool = True,
    max_mailboxes: int = 0,
    max_aliases: int = 0,
    default_quota_bytes: int | None = None,
    admins: Iterable[str] = (),
    max_messages_per_hour: int = 0,
    max_recipients_per_hour: int = 0,
    require_mfa: bool = False,
) -> Domain:
    """Create a hosted domain (superadmins only). The name is stored IDNA-encoded."""
    _require_superadmin(actor, "add domains")
    ascii_name = normalize_domain(name, field="name")
    if Domain.objects.filter(name=ascii_name).exists():
        raise ConflictError(
            f"The domain {name} already exists.",
            code="duplicate",
            fields={"name": ["This domain already exists."]},
        )
    _check_quota(default_quota_bytes, field_name="default_quota_bytes")
    domain = Domain(
        name=ascii_name,
        description=description,
        is_active=is_active,
        max_mailboxes=max_mailboxes,
        max_aliases=max_aliases,
        max_messages_per_hour=max_messages_per_hour,
        max_recipients_per_hour=max_recipients_per_hour,
        require_mfa=require_mfa,
    )
    if default_quota_bytes is not None:
        domain.default_quota_bytes = default_quota_bytes
    domain.save()
    if admins:
        domain_set_admins(actor=actor, domain=domain, admin_emails=admins)
    emit(
        "mailboxes.domain_created",
        "info",
        f"Domain {domain.name_unicode} was added by {actor.email}.",
        domain_id=domain.pk,
        domain=domain.name,
        actor=actor.email,
    )
    audit("domain.create", actor=actor, target=domain, changes=audit_changes({}, domain), domain_id=domain.pk)
    return domain


@transaction.atomic
def domain_update(
    *,
    actor: User,
    domain: Domain,
    description: str | None = None,
    is_active: bool | None = None,
    max_mailboxes: int | None = None,
    max_aliases: int | None = None,
    default_quota_bytes: int | None = None,
    admins: Iterable[str] | None = None,
    max_messages_per_hour: int | None = None,
    max_recipients_per_hour: int | None = None,
    require_mfa: bool | None = None,
) -> Domain:
    """Change a domain's settings (superadmins). Disabling a domain raises an alert."""
    _require_superadmin(actor, "change domains")
    _check_quota(default_quota_bytes, field_name="default_quota_bytes")
    was_active = domain.is_active
    before = snapshot(domain)
    for name, value in (
        ("description", description),
        ("is_active", is_active),
        ("max_mailboxes", max_mailboxes),
        ("max_aliases", max_aliases),
        ("default_quota_bytes", default_quota_bytes),
        ("max_messages_per_hour", max_messages_per_hour),
        ("max_recipients_per_hour", max_recipients_per_hour),
        ("require_mfa", require_mfa),
    ):
        if value is not None:
            setattr(domain, name, value)
    domain.save()
    if admins is not None:
        domain_set_admins(actor=actor, domain=domain, admin_emails=admins)
    if was_active and not domain.is_active:
        emit(
            "mailboxes.domain_disabled",
            "warning",
            f"Domain {domain.name_unicode} was disabled by {actor.email}.",
            domain_id=domain.pk,
            domain=domain.name,
            actor=actor.email,
        )
    action = "domain.disable" if was_active and not domain.is_active else "domain.update"
    audit(action, actor=actor, target=domain, changes=audit_changes(before, domain), domain_id=domain.pk)
    return domain


@transaction.atomic
def domain_set_admins(*, actor: User, domain: Domain, admin_emails: Iterable[str]) -> Domain:
    """Assign the domain admins of a domain. Each must be an existing domain-admin user."""
    _require_superadmin(actor, "assign domain admins")
    wanted: list[User] = []
    errors: list[str] = []
    for email in admin_emails:
        user = User.objects.filter(email=email.strip().lower()).first()
        if user is None:
            errors.append(f"No user {email}.")
        elif user.role != User.Role.DOMAIN_ADMIN:
            errors.append(f"{email} is not a domain admin.")
        else:
            wanted.append(user)
    if errors:
        raise ApplicationError("Some domain admins are invalid.", fields={"admins": errors})
    domain.admins.set(wanted)
    return domain


@dataclass
class DeletionReport:
    """What a delete removed, so the caller can tell the administrator."""

    mailboxes: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    destinations_removed: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


@transaction.atomic
def domain_delete(*, actor: User, domain: Domain) -> DeletionReport:
    """Delete a domain with its mailboxes and aliases, and remove its addresses from
    aliases elsewhere so that no destination is left dangling."""
    _require_superadmin(actor, "delete domains")
    report = DeletionReport()
    for alias in list(domain.aliases.all()):
        _alias_delete_cascade(alias, report)
    for mailbox in list(domain.mailboxes.select_related("owner")):
        _mailbox_delete_cascade(mailbox, report)
    audit("domain.delete", actor=actor, target=domain, domain_id=domain.pk, mailboxes=len(report.mailboxes))
    domain.delete()
    return report


# --- Mailboxes -------------------------------------------------------------------------


@transaction.atomic
def mailbox_create(
    *,
    actor: User,
    address: str,
    password: str,
    quota_bytes: int | None = None,
    display_name: str = "",
    owner_email: str | None = None,
    is_active: bool = True,
) -> Mailbox:
    """Create a mailbox with its standard folders.

    The owner is the user with `owner_email`, or else a mailbox user whose login is the
    mailbox address (created with the same password if new). Enforces the domain's limit
    and address uniqueness across mailboxes and aliases.
    """
    parsed = parse_address(address)
    domain = _local_domain_for(parsed, actor=actor, field_name="address")
    domain = _lock_domain_with_room(domain, kind="mailboxes")
    _require_address_free(parsed)
    _check_quota(quota_bytes)
    account_services.password_validate(password)

    owner = _mailbox_owner(actor=actor, address=parsed, owner_email=owner_email, password=password)

    mailbox = Mailbox.objects.create(
        domain=domain,
        local_part=parsed.local_part,
        address=parsed.value,
        owner=owner,
        display_name=display_name,
        password=make_password(password),
        quota_bytes=domain.default_quota_bytes if quota_bytes is None else quota_bytes,
        is_active=is_active,
    )
    Folder.objects.bulk_create(
        Folder(mailbox=mailbox, name=name, special_use=special_use) for name, special_use in DEFAULT_FOLDERS
    )
    emit(
        "mailboxes.mailbox_created",
        "info",
        f"Mailbox {mailbox.address_display} was created by {actor.email}.",
        domain_id=domain.pk,
        mailbox_id=mailbox.pk,
        address=mailbox.address,
        actor=actor.email,
    )
    audit(
        "mailbox.create", actor=actor, target=mailbox, changes=audit_changes({}, mailbox), domain_id=domain.pk
    )
    return mailbox


@transaction.atomic
def mailbox_update(
    *,
    actor: User,
    mailbox: Mailbox,
    password: str | None = None,
    quota_bytes: int | None = None,
    display_name: str | None = None,
    is_active: bool | None = None,
    save_sent_copy: bool | None = None,
    max_messages_per_hour: int | None = None,
    max_recipients_per_hour: int | None = None,
) -> Mailbox:
    """Change a mailbox. Owners may change their own password, display name and whether
    sent mail is copied to Sent; quota, state and sending limits need a domain admin.
    Disabling emits an alert."""
    is_owner = mailbox.owner_id == actor.pk
    admin_change = any(
        value is not None
        for value in (quota_bytes, is_active, max_messages_per_hour, max_recipients_per_hour)
    )
    if admin_change or not is_owner:
        _require_manage(actor, mailbox.domain)
    _check_quota(quota_bytes)
    was_active = mailbox.is_active
    before = snapshot(mailbox)
    if password:
        account_services.password_validate(password)
        mailbox.password = make_password(password)
    if quota_bytes is not None:
        mailbox.quota_bytes = quota_bytes
    if display_name is not None:
        mailbox.display_name = display_name
    if is_active is not None:
        mailbox.is_active = is_active
    for name, value in (
        ("save_sent_copy", save_sent_copy),
        ("max_messages_per_hour", max_messages_per_hour),
        ("max_recipients_per_hour", max_recipients_per_hour),
    ):
        if value is not None:
            setattr(mailbox, name, value)
    mailbox.save()
    if was_active and not mailbox.is_active:
        emit(
            "mailboxes.mailbox_disabled",
            "warning",
            f"Mailbox {mailbox.address_display} was disabled by {actor.email}.",
            domain_id=mailbox.domain_id,
            mailbox_id=mailbox.pk,
            address=mailbox.address,
            actor=actor.email,
        )
    action = {(True, False): "mailbox.disable", (False, True): "mailbox.enable"}.get(
        (was_active, mailbox.is_active)
    )
    changes = audit_changes(before, mailbox)
    audit(
        action or "mailbox.update", actor=actor, target=mailbox, changes=changes, domain_id=mailbox.domain_id
    )
    return mailbox


def mailbox_disable(*, actor: User, mailbox: Mailbox) -> Mailbox:
    """Stop accepting and serving mail for a mailbox, keeping its content."""
    return mailbox_update(actor=actor, mailbox=mailbox, is_active=False)


def mailbox_enable(*, actor: User, mailbox: Mailbox) -> Mailbox:
    return mailbox_update(actor=actor, mailbox=mailbox, is_active=True)


@transaction.atomic
def mailbox_delete(*, actor: User, mailbox: Mailbox) -> DeletionReport:
    """Delete a mailbox and its folders. Aliases lose it as a destination; aliases left
    with none are deleted. Its owner goes too when that is a mailbox user with nothing
    else."""
    _require_manage(actor, mailbox.domain)
    report = DeletionReport()
    audit("mailbox.delete", actor=actor, target=mailbox, domain_id=mailbox.domain_id)
    _mailbox_delete_cascade(mailbox, report)
    return report


def mailbox_references(*, mailbox: Mailbox) -> list[str]:
    """Aliases that deliver to this mailbox (shown before deleting it)."""
    return list(
        Alias.objects.filter(destinations__address=mailbox.address)
        .values_list("address", flat=True)
        .distinct()
    )


def _assignable_owners(actor: User) -> QuerySet[User]:
    """Users the actor may make mailbox owners: anyone for superadmins; for domain
    admins, only mailbox users already in their scope (never admins or strangers)."""
    if actor.is_superadmin:
        return User.objects.all()
    return User.objects.visible_to(actor).filter(role=User.Role.USER)


def _mailbox_owner(*, actor: User, address: Address, owner_email: str | None, password: str) -> User:
    if owner_email:
        try:
            email = parse_address(owner_email, field="owner").value
        except ApplicationError:
            email = ""
        owner = _assignable_owners(actor).filter(email=email).first() if email else None
        if owner is None:
            # One answer for unknown and out-of-scope users: no probing for accounts.
            raise ApplicationError(
                f"{owner_email} is not a user you can assign.",
                code="unknown_owner",
                fields={"owner": ["No such user that you may assign."]},
            )
        return owner
    existing = User.objects.filter(email=address.value).first()
    if existing is None:
        return account_services.user_create(
            actor=actor, email=address.value, password=password, role=User.Role.USER
        )
    if _assignable_owners(actor).filter(pk=existing.pk).exists():
        return existing
    raise ConflictError(
        f"An account {address.display} already exists; a superadmin must assign it.",
        code="owner_out_of_scope",
        fields={"address": ["An account with this address exists; ask a superadmin."]},
    )


def _mailbox_delete_cascade(mailbox: Mailbox, report: DeletionReport) -> None:
    _destinations_remove(mailbox.address, report)
    owner = mailbox.owner
    report.mailboxes.append(mailbox.address)
    # Its mail first: messages no other mailbox holds go too (their blobs with the sweep).
    removal = remove_mail_items(
        MailItem.objects.filter(mailbox=mailbox), via="mailbox_delete", mailbox_id=mailbox.pk
    )
    if removal.kept:
        # Deleting the mailbox would drop the held items with it: refuse the whole thing.
        raise DeletionHeld(kept=removal.kept, removed=0)
    mailbox.delete()
    # Only the account made for this mailbox (same address) goes with it; an owner that
    # was assigned is a person with a life beyond this mailbox.
    if owner.role == User.Role.USER and owner.email == mailbox.address and not owner.mailboxes.exists():
        report.users.append(owner.email)
        owner.delete()


def _destinations_remove(address: str, report: DeletionReport) -> None:
    """Drop `address` from every alias; delete aliases that end up with no destination."""
    rows = AliasDestination.objects.filter(address=address).select_related("alias")
    affected = {row.alias for row in rows}
    report.destinations_removed.extend(f"{row.alias.address} -> {address}" for row in rows)
    rows.delete()
    for alias in affected:
        if not alias.destinations.exists():
            _alias_delete_cascade(alias, report)


def _alias_delete_cascade(alias: Alias, report: DeletionReport) -> None:
    if alias.pk is None or not Alias.objects.filter(pk=alias.pk).exists():
        return  # already removed further up the cascade
    report.aliases.append(alias.address)
    address = alias.address
    alias.delete()
    _destinations_remove(address, report)


# --- Aliases ---------------------------------------------------------------------------


def _normalize_destinations(raw: Iterable[str], *, alias_address: str) -> list[str]:
    """Parse destinations and check each one: local ones must exist, external ones need
    the outbound relay, and none may be the alias itself."""
    if isinstance(raw, str):
        raw = [raw]
    values: list[str] = []
    errors: list[str] = []
    for item in raw:
        try:
            parsed = parse_address(item, field="destinations")
        except ApplicationError as exc:
            errors.append(exc.message)
            continue
        if parsed.value in values:
            continue
        if parsed.value == alias_address:
            errors.append(f"{parsed.display} is the alias itself.")
            continue
        if Domain.objects.filter(name=parsed.domain).exists() and not (
            Mailbox.objects.filter(address=parsed.value).exists()
            or Alias.objects.filter(address=parsed.value).exists()
        ):
            errors.append(f"{parsed.display} does not exist here: create it first.")
            continue
        # An external destination is forwarded through the outbound queue (with SRS).
        values.append(parsed.value)
    if errors:
        raise ApplicationError("Some destinations are invalid.", fields={"destinations": errors})
    if not values:
        raise ApplicationError(
            "An alias needs at least one destination.",
            fields={"destinations": ["At least one destination is required."]},
        )
    if len(values) > MAX_ALIAS_DESTINATIONS:
        raise ApplicationError(
            f"An alias can have at most {MAX_ALIAS_DESTINATIONS} destinations.",
            fields={"destinations": ["Too many destinations."]},
        )
    return values


def _levels_below(alias_address: str, destinations: list[str]) -> int:
    """Alias levels reachable from `destinations`, following alias-to-alias hops.

    Raises AliasLoop when the walk comes back to `alias_address`."""
    frontier = list(destinations)
    seen: set[str] = set()
    levels = 0
    while frontier:
        if alias_address in frontier:
            raise AliasLoop(
                f"This would create an alias loop back to {alias_address}.",
                fields={"destinations": ["Creates a loop."]},
            )
        levels += 1
        if levels > MAX_ALIAS_DEPTH:
            break  # deep enough to refuse; no need to walk further
        seen.update(frontier)
        frontier = [
            address
            for address in AliasDestination.objects.filter(alias__address__in=frontier).values_list(
                "address", flat=True
            )
            if address not in seen or address == alias_address
        ]
    return levels


def _levels_above(alias_address: str) -> int:
    """How many aliases deep `alias_address` already sits below other aliases."""
    frontier = [alias_address]
    seen: set[str] = set()
    levels = 0
    while frontier and levels <= MAX_ALIAS_DEPTH:
        seen.update(frontier)
        frontier = [
            address
            for address in AliasDestination.objects.filter(address__in=frontier).values_list(
                "alias__address", flat=True
            )
            if address not in seen
        ]
        if frontier:
            levels += 1
    return levels


def _check_no_loop(alias_address: str, destinations: list[str]) -> None:
    """Refuse destinations that lead back to the alias, or chains (counting the aliases
    that already deliver to this one) deeper than MAX_ALIAS_DEPTH."""
    depth = _levels_above(alias_address) + _levels_below(alias_address, destinations)
    if depth > MAX_ALIAS_DEPTH:
        raise AliasLoop(
            f"Aliases would nest more than {MAX_ALIAS_DEPTH} levels deep through {alias_address}.",
            fields={"destinations": ["Alias chain too deep."]},
        )


@transaction.atomic
def alias_create(
    *,
    actor: User,
    address: str,
    destinations: Iterable[str],
    description: str = "",
    is_active: bool = True,
    send_as: Iterable[str] = (),
) -> Alias:
    """Create an alias or, with `@domain`, the domain's catch-all. `send_as` lists the
    mailboxes whose users may send with the alias as their address."""
    parsed = parse_address(address, allow_catch_all=True)
    domain = _local_domain_for(parsed, actor=actor, field_name="address")
    domain = _lock_domain_with_room(domain, kind="aliases")
    _require_address_free(parsed)
    values = _normalize_destinations(destinations, alias_address=parsed.value)
    _check_no_loop(parsed.value, values)
    alias = Alias.objects.create(
        domain=domain,
        local_part=parsed.local_part,
        address=parsed.value,
        description=description,
        is_active=is_active,
    )
    AliasDestination.objects.bulk_create(AliasDestination(alias=alias, address=v) for v in values)
    if send_as:
        alias.send_as.set(_send_as_mailboxes(actor, alias, send_as))
    changes = audit_changes({}, alias, destinations=values)
    audit("alias.create", actor=actor, target=alias, changes=changes, domain_id=domain.pk)
    return alias


def _send_as_mailboxes(actor: User, alias: Alias, addresses: Iterable[str]) -> list[Mailbox]:
    """The mailboxes named in `addresses`; each must be one the actor manages. A catch-all
    cannot be sent as: it has no address of its own."""
    addresses = [a for a in addresses if a.strip()]
    if addresses and alias.is_catch_all:
        raise ApplicationError(
            "A catch-all cannot be used as a sender.", fields={"send_as": ["Not for a catch-all."]}
        )
    found: list[Mailbox] = []
    errors: list[str] = []
    for raw in addresses:
        try:
            value = parse_address(raw, field="send_as").value
        except ApplicationError as exc:
            errors.append(exc.message)
            continue
        mailbox = Mailbox.objects.filter(address=value).select_related("domain").first()
        if mailbox is None or not Domain.objects.manageable_by(actor).filter(pk=mailbox.domain_id).exists():
            errors.append(f"{raw}: no such mailbox.")
            continue
        found.append(mailbox)
    if errors:
        raise ApplicationError("Some send-as mailboxes are invalid.", fields={"send_as": errors})
    return found


@transaction.atomic
def alias_update(
    *,
    actor: User,
    alias: Alias,
    destinations: Iterable[str] | None = None,
    description: str | None = None,
    is_active: bool | None = None,
    send_as: Iterable[str] | None = None,
) -> Alias:
    _require_manage(actor, alias.domain)
    before = snapshot(alias, destinations=sorted(alias.destinations.values_list("address", flat=True)))
    if send_as is not None:
        alias.send_as.set(_send_as_mailboxes(actor, alias, send_as))
    if destinations is not None:
        values = _normalize_destinations(destinations, alias_address=alias.address)
        _check_no_loop(alias.address, values)
        alias.destinations.all().delete()
        AliasDestination.objects.bulk_create(AliasDestination(alias=alias, address=v) for v in values)
    if description is not None:
        alias.description = description
    if is_active is not None:
        alias.is_active = is_active
    alias.save()
    after = sorted(alias.destinations.values_list("address", flat=True))
    audit(
        "alias.update",
        actor=actor,
        target=alias,
        changes=audit_changes(before, alias, destinations=after),
        domain_id=alias.domain_id,
    )
    return alias


@transaction.atomic
def alias_delete(*, actor: User, alias: Alias) -> DeletionReport:
    """Delete an alias and remove it from other aliases' destinations."""
    _require_manage(actor, alias.domain)
    report = DeletionReport()
    audit("alias.delete", actor=actor, target=alias, domain_id=alias.domain_id)
    _alias_delete_cascade(alias, report)
    return report
