"""Test settings: the real settings, with speed and isolation overrides only."""

import os
import tempfile

os.environ.setdefault("A3_DATA_DIR", tempfile.mkdtemp(prefix="a3test-"))
os.environ.setdefault("A3_LOG_FORMAT", "text")

from a3mailer.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Redis stays in play when REDIS_URL is set (CI's second run), so the real layer is tested.
if not REDIS_URL:  # noqa: F405
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"auth": "1000/min"}}  # noqa: F405
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# The MFA policy is off for the suite at large (most tests sign in with force_login and no
# second factor); the MFA tests switch it on with the settings fixture.
A3_MFA_REQUIRED_ROLES = []
