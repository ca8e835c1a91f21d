"""Encryption at rest for secrets kept in the database (SSO client secrets, DKIM private
keys, transport passwords). The key is derived from the Django secret key with HKDF, so a
database dump alone does not reveal them; rotating the secret key requires re-entering
these secrets."""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_PREFIX = "enc:v1:"


@lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"a3mailer-relay", info=b"secrets-at-rest").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def secret_encrypt(plaintext: str) -> str:
    """The stored form of `plaintext` ("" stays "")."""
    if not plaintext:
        return ""
    return _PREFIX + _fernet(settings.SECRET_KEY).encrypt(plaintext.encode()).decode()


def secret_decrypt(stored: str) -> str:
    """The plaintext of a stored secret. Raises ValueError when it cannot be decrypted
    (the secret key changed)."""
    if not stored:
        return ""
    if not stored.startswith(_PREFIX):
        raise ValueError("stored secret is not encrypted")
    try:
        return _fernet(settings.SECRET_KEY).decrypt(stored[len(_PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with the current secret key") from exc
