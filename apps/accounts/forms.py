from django import forms

from apps.accounts.models import User


class LoginForm(forms.Form):
    email = forms.CharField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True})
    )
    password = forms.CharField(
        max_length=1024, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class LockoutClearForm(forms.Form):
    """The hidden fields of a Clear button: one login name or one address."""

    username = forms.CharField(max_length=254, required=False)
    ip = forms.GenericIPAddressField(required=False)

    def clean(self) -> dict:
        data = super().clean()
        if bool(data.get("username")) == bool(data.get("ip")):
            raise forms.ValidationError("Give either a login name or an address.")
        return data


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    expires_in_days = forms.IntegerField(min_value=0, max_value=3650, initial=90, help_text="0 means never.")


class UserCreateForm(forms.Form):
    email = forms.CharField(max_length=254)
    full_name = forms.CharField(max_length=150, required=False)
    role = forms.ChoiceField(choices=User.Role.choices)
    password = forms.CharField(
        max_length=1024, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )


class UserUpdateForm(forms.Form):
    full_name = forms.CharField(max_length=150, required=False)
    role = forms.ChoiceField(choices=User.Role.choices)
    is_active = forms.BooleanField(required=False)
    password = forms.CharField(
        max_length=1024,
        strip=False,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current password.",
    )
