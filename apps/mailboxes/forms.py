from django import forms


def _lines(value: str) -> list[str]:
    return [part.strip() for chunk in value.splitlines() for part in chunk.split(",") if part.strip()]


class DomainForm(forms.Form):
    name = forms.CharField(max_length=300, help_text="Internationalised names are fine (bücher.example).")
    description = forms.CharField(max_length=255, required=False)
    is_active = forms.BooleanField(required=False, initial=True)
    max_mailboxes = forms.IntegerField(min_value=0, initial=0, help_text="0 means no limit.")
    max_aliases = forms.IntegerField(min_value=0, initial=0, help_text="0 means no limit.")
    default_quota_mib = forms.IntegerField(
        min_value=0, initial=1024, label="Default quota (MiB)", help_text="0 means no limit."
    )
    admins = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Emails of domain-admin users, one per line.",
    )
    max_messages_per_hour = forms.IntegerField(
        min_value=0,
        initial=0,
        required=False,
        label="Messages per hour (domain)",
        help_text="Outbound limit; 0: server default.",
    )
    max_recipients_per_hour = forms.IntegerField(
        min_value=0,
        initial=0,
        required=False,
        label="Recipients per hour (domain)",
        help_text="Outbound limit; 0: server default.",
    )
    require_mfa = forms.BooleanField(
        required=False,
        label="Mailbox users need a second factor",
        help_text="Administrators always do; this adds the domain's mailbox users.",
    )

    def __init__(self, *args: object, editing: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["name"]

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        data["default_quota_bytes"] = data.pop("default_quota_mib") * 1024 * 1024
        data["admins"] = _lines(data.get("admins") or "")
        for name in ("max_messages_per_hour", "max_recipients_per_hour"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class MailboxCreateForm(forms.Form):
    address = forms.CharField(max_length=320, help_text="local@domain")
    display_name = forms.CharField(max_length=150, required=False)
    password = forms.CharField(
        max_length=1024, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    quota_mib = forms.IntegerField(
        min_value=0, required=False, label="Quota (MiB)", help_text="Empty: the domain default. 0: no limit."
    )
    owner = forms.CharField(
        max_length=254,
        required=False,
        help_text="Existing user who owns it; empty creates a user with the mailbox address.",
    )

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        quota = data.pop("quota_mib")
        data["quota_bytes"] = None if quota is None else quota * 1024 * 1024
        data["owner_email"] = data.pop("owner") or None
        return data


class MailboxUpdateForm(forms.Form):
    display_name = forms.CharField(max_length=150, required=False)
    quota_mib = forms.IntegerField(min_value=0, label="Quota (MiB)", help_text="0 means no limit.")
    is_active = forms.BooleanField(required=False, label="Active")
    password = forms.CharField(
        max_length=1024,
        strip=False,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current password.",
    )
    save_sent_copy = forms.BooleanField(required=False, label="Copy sent mail to Sent")
    max_messages_per_hour = forms.IntegerField(
        min_value=0, required=False, label="Messages per hour", help_text="Outbound limit; 0: server default."
    )
    max_recipients_per_hour = forms.IntegerField(
        min_value=0,
        required=False,
        label="Recipients per hour",
        help_text="Outbound limit; 0: server default.",
    )

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        data["quota_bytes"] = data.pop("quota_mib") * 1024 * 1024
        if not data.get("password"):
            data.pop("password", None)
        for name in ("max_messages_per_hour", "max_recipients_per_hour"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class AliasForm(forms.Form):
    address = forms.CharField(max_length=320, help_text="local@domain, or @domain for a catch-all.")
    destinations = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), help_text="One address per line."
    )
    description = forms.CharField(max_length=255, required=False)
    is_active = forms.BooleanField(required=False, initial=True, label="Active")
    send_as = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Send as",
        help_text="Mailboxes whose users may send with this address, one per line.",
    )

    def __init__(self, *args: object, editing: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["address"]

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        data["destinations"] = _lines(data["destinations"])
        data["send_as"] = _lines(data.get("send_as") or "")
        return data
