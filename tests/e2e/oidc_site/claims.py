"""What the test provider says about its users."""

from __future__ import annotations


def userinfo(claims: dict, user) -> dict:
    claims["email"] = user.email
    claims["email_verified"] = True
    claims["name"] = f"{user.first_name} {user.last_name}".strip()
    claims["given_name"] = user.first_name
    claims["family_name"] = user.last_name
    return claims


def id_token_hook(id_token: dict, user, token, request, **kwargs) -> dict:
    # The user signed in with a password and a one-time code (RFC 8176 values).
    id_token["amr"] = ["pwd", "otp"]
    return id_token
