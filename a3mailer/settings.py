"""A3Mailer settings: one module, every deploy-time value from the environment.

Every variable has a working default so that `make run` needs nothing but Python. The full
list, with comments, is in `.env.example`; the README has the table.
"""

from __future__ import annotations

from pathlib import Path

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from a3mailer.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_secret,
    env_str,
    parse_listen,
    persistent_secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Paths and identity ----------------------------------------------------------------
A3_DATA_DIR = Path(env_str("A3_DATA_DIR", str(BASE_DIR / "var"))).resolve()
if not A3_DATA_DIR.exists():
    # Private by default: the database holds password and token hashes.
    A3_DATA_DIR.mkdir(parents=True, mode=0o700)
A3_BLOB_DIR = A3_DATA_DIR / "blobs"
A3_HOSTNAME = env_str("A3_HOSTNAME", "localhost").strip().lower()

A3_HTTP_LISTEN = parse_listen("A3_HTTP_LISTEN", "127.0.0.1:8000")
A3_SMTP_LISTEN = parse_listen("A3_SMTP_LISTEN", "127.0.0.1:2525")
A3_SUBMISSION_LISTEN = parse_listen("A3_SUBMISSION_LISTEN", "127.0.0.1:2587")
A3_MAX_MESSAGE_SIZE = env_int("A3_MAX_MESSAGE_SIZE", 26_214_400, minimum=1024)
A3_BLOB_STORE = env_str("A3_BLOB_STORE", "apps.mailboxes.blobstore.LocalBlobStore")
# SMTP listener policy (RFC 5321 limits; see docs/smtp.md).
A3_SMTP_MAX_RECIPIENTS = env_int("A3_SMTP_MAX_RECIPIENTS", 100, minimum=1)
A3_SMTP_TIMEOUT_SECONDS = env_int("A3_SMTP_TIMEOUT_SECONDS", 300, minimum=5)
A3_SMTP_MAX_CONNECTIONS_PER_IP = env_int("A3_SMTP_MAX_CONNECTIONS_PER_IP", 20, minimum=1)
A3_SMTP_MAX_CONNECTIONS = env_int("A3_SMTP_MAX_CONNECTIONS", 1000, minimum=1)
A3_SMTP_MAX_ERRORS = env_int("A3_SMTP_MAX_ERRORS", 10, minimum=1)
# Seconds a received message may wait for delivery before the sweep re-enqueues it.
A3_DELIVERY_SWEEP_AFTER_SECONDS = env_int("A3_DELIVERY_SWEEP_AFTER_SECONDS", 60, minimum=1)
# Delivery pipeline: each stage gets a DeliveryContext (apps/mailboxes/services/messages.py).
# The threat stage applies the scan verdict (junk, quarantine) to the expanded targets.
A3_DELIVERY_STAGES = [
    "apps.mailboxes.services.messages.expand_recipients",
    "apps.threats.services.verdicts.apply_verdict_stage",
    "apps.relay.services.forwarding.queue_forwards",
    "apps.relay.services.bounces.match_inbound_dsn",
    "apps.relay.services.bounces.report_local_failures",
    "apps.compliance.services.classification.classify_stage",
]
# The task a newly accepted message is handed to: the scanner (scan queue), which hands
# it on to delivery.
A3_ACCEPTED_MESSAGE_TASK = "apps.threats.tasks.message_scan_task"
# Messages a delivery pass may take at once (its own plus others already waiting).
A3_DELIVERY_BATCH = env_int("A3_DELIVERY_BATCH", 10, minimum=1)

# --- Submission and outbound relay (docs/relay.md) ------------------------------------------
# Implicit-TLS submission (port 465 style); off unless set.
A3_SUBMISSIONS_LISTEN = (
    parse_listen("A3_SUBMISSIONS_LISTEN", "") if env_str("A3_SUBMISSIONS_LISTEN") else None
)
# Received headers of authenticated mail leave out the client's address (privacy).
A3_SUBMISSION_HIDE_CLIENT_IP = env_bool("A3_SUBMISSION_HIDE_CLIENT_IP", True)
# Send everything to one host ("host:port") instead of the recipients' MX hosts.
A3_SMARTHOST = env_str("A3_SMARTHOST")
A3_SMARTHOST_USERNAME = env_str("A3_SMARTHOST_USERNAME")
A3_SMARTHOST_PASSWORD = env_secret("A3_SMARTHOST_PASSWORD")
A3_SMARTHOST_TLS = env_str("A3_SMARTHOST_TLS", "opportunistic")
# DNS servers ("ip" or "ip:port", comma-separated) instead of the system's: split-horizon
# sites and tests.
A3_DNS_NAMESERVERS = env_list("A3_DNS_NAMESERVERS", [])
A3_DNS_TIMEOUT_SECONDS = env_int("A3_DNS_TIMEOUT_SECONDS", 10, minimum=1)
# The port of remote MX hosts: 25 everywhere but in labs and tests.
A3_RELAY_MX_PORT = env_int("A3_RELAY_MX_PORT", 25, minimum=1)
# Retries: exponential backoff from the minimum, capped, until the maximum age; then bounce.
A3_RELAY_RETRY_MIN_SECONDS = env_int("A3_RELAY_RETRY_MIN_SECONDS", 300, minimum=1)
A3_RELAY_RETRY_MAX_SECONDS = env_int("A3_RELAY_RETRY_MAX_SECONDS", 4 * 3600, minimum=1)
A3_RELAY_MAX_AGE_SECONDS = env_int("A3_RELAY_MAX_AGE_SECONDS", 5 * 86400, minimum=60)
A3_RELAY_DELAY_WARNING_SECONDS = env_int("A3_RELAY_DELAY_WARNING_SECONDS", 4 * 3600, minimum=0)
A3_RELAY_CONNECT_TIMEOUT_SECONDS = env_int("A3_RELAY_CONNECT_TIMEOUT_SECONDS", 30, minimum=1)
A3_RELAY_COMMAND_TIMEOUT_SECONDS = env_int("A3_RELAY_COMMAND_TIMEOUT_SECONDS", 300, minimum=1)
A3_RELAY_DESTINATION_CONCURRENCY = env_int("A3_RELAY_DESTINATION_CONCURRENCY", 5, minimum=1)
A3_RELAY_BATCH = env_int("A3_RELAY_BATCH", 20, minimum=1)
# Seconds a queued item may wait without a worker before the sweep re-enqueues it.
A3_RELAY_SWEEP_AFTER_SECONDS = env_int("A3_RELAY_SWEEP_AFTER_SECONDS", 60, minimum=1)
# Alerts: items waiting in the queue, and a destination deferring for this long.
A3_RELAY_QUEUE_ALERT_THRESHOLD = env_int("A3_RELAY_QUEUE_ALERT_THRESHOLD", 1000, minimum=1)
A3_RELAY_DEFERRED_ALERT_SECONDS = env_int("A3_RELAY_DEFERRED_ALERT_SECONDS", 3600, minimum=60)
# Sender Rewriting Scheme for forwards to external addresses.
A3_SRS_DOMAIN = (env_str("A3_SRS_DOMAIN") or A3_HOSTNAME).strip().lower()
A3_SRS_SECRET = env_secret("A3_SRS_SECRET")  # unset: derived from the secret key
# Outbound rate limits per hour (per mailbox and per domain; both overridable per object).
A3_RATE_MAILBOX_MESSAGES_PER_HOUR = env_int("A3_RATE_MAILBOX_MESSAGES_PER_HOUR", 500, minimum=1)
A3_RATE_MAILBOX_RECIPIENTS_PER_HOUR = env_int("A3_RATE_MAILBOX_RECIPIENTS_PER_HOUR", 2000, minimum=1)
A3_RATE_DOMAIN_MESSAGES_PER_HOUR = env_int("A3_RATE_DOMAIN_MESSAGES_PER_HOUR", 5000, minimum=1)
A3_RATE_DOMAIN_RECIPIENTS_PER_HOUR = env_int("A3_RATE_DOMAIN_RECIPIENTS_PER_HOUR", 20000, minimum=1)

A3_TLS_CERT = env_str("A3_TLS_CERT")

A3_TLS_KEY = env_str("A3_TLS_KEY")
if bool(A3_TLS_CERT) != bool(A3_TLS_KEY):
    raise ImproperlyConfigured("A3_TLS_CERT and A3_TLS_KEY must be set together")

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_secret("DJANGO_SECRET_KEY") or persistent_secret_key(A3_DATA_DIR)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [A3_HOSTNAME, "localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# --- Applications ----------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_celery_beat",
    "channels",
    "csp",
    "apps.core",
    "apps.alerts",
    "apps.accounts",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "django_otp_webauthn",
    "social_django",
    "apps.mailboxes",
    "apps.relay",
    "apps.compliance",
    "apps.threats",
]


MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "apps.accounts.middleware.MfaEnforcementMiddleware",
    "apps.accounts.session_middleware.WebSessionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.core.middleware.ApplicationErrorMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "a3mailer.urls"
ASGI_APPLICATION = "a3mailer.asgi.application"
WSGI_APPLICATION = "a3mailer.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.a3mailer",
                # The sign-in buttons of the login page (a lazy query, run only there).
                "apps.accounts.sso.context_processors.sso_login_providers",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------
# SQLite runs in WAL mode with IMMEDIATE transactions so that concurrent writers queue on
# the busy timeout instead of failing with "database is locked" on lock upgrade.
# synchronous=NORMAL is crash-safe in WAL mode; commits that must survive power loss
# (accepted mail) use apps.core.db.durable_atomic, which syncs with FULL.

_SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
    "init_command": (
        "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA foreign_keys=ON;PRAGMA busy_timeout=30000;"
    ),
}
_env = environ.Env()
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    _db = _env.db_url_config(DATABASE_URL)
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["ENGINE"] = "apps.core.sqlite"
        _db.setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
        _db["CONN_MAX_AGE"] = None

    elif _db["ENGINE"] in {
        "django.db.backends.postgresql",
        "django.db.backends.postgresql_psycopg2",
    }:
        _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
        _db["CONN_MAX_AGE"] = env_int("A3_DB_CONN_MAX_AGE", 60, minimum=0)
        _db["CONN_HEALTH_CHECKS"] = True
else:
    _db = {
        "ENGINE": "apps.core.sqlite",
        "NAME": str(A3_DATA_DIR / "a3mailer.sqlite3"),
        "OPTIONS": dict(_SQLITE_OPTIONS),
        # Keep each thread's connection: opening one (and its PRAGMAs) costs more than
        # the SMTP lookups it serves.
        "CONN_MAX_AGE": None,
    }

DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, channel layer, cache -------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "a3",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "a3:channels"},
        }
    }
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
else:
    # Embedded mode: everything lives in the one `serve` process. The database stays the
    # source of truth, so a lost in-memory task only delays work until the next sweep.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "memory://")
    # The in-memory transport has no wake-up signal, only polling (1 s by default):
    # poll often, it is a dictionary lookup.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.005}


# --- Celery ----------------------------------------------------------------------------
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_TIME_LIMIT = 360
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# SQLite has one writer: more delivery threads only queue on it (measured: 1 is fastest).
A3_WORKER_CONCURRENCY = env_int(
    "A3_WORKER_CONCURRENCY", 1 if DATABASES["default"]["ENGINE"] == "apps.core.sqlite" else 4, minimum=1
)
# How often beat asks a worker to record a heartbeat (shown by /readyz).
A3_HEARTBEAT_SECONDS = env_int("A3_HEARTBEAT_SECONDS", 30, minimum=1)

# --- Auth ------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:overview"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTHENTICATION_BACKENDS = [
    # Refuses a locked-out login name or address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Runs social-auth's pipeline for single sign-on (apps/accounts/sso/backends.py).
    "apps.accounts.sso.backends.SsoPipelineBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("A3_PASSWORD_MIN_LENGTH", 12, minimum=8)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
DJANGO_SUPERUSER_EMAIL = env_str("DJANGO_SUPERUSER_EMAIL")
DJANGO_SUPERUSER_PASSWORD = env_secret("DJANGO_SUPERUSER_PASSWORD")

# Failed logins from one address or for one account within the window raise an alert.
A3_LOGIN_FAILURE_ALERT_THRESHOLD = env_int("A3_LOGIN_FAILURE_ALERT_THRESHOLD", 5, minimum=1)
A3_LOGIN_FAILURE_WINDOW_SECONDS = env_int("A3_LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1)

# Brute-force lockout, one policy for web, API and SMTP AUTH (apps/accounts/lockout.py): after
# this many failures for one login name, or from one address, that name or address is refused
# for A3_LOCKOUT_SECONDS, doubled for each earlier lockout of it within 24 hours (at most 24 h).
A3_LOCKOUT_FAILURES = env_int("A3_LOCKOUT_FAILURES", 5, minimum=1)
A3_LOCKOUT_SECONDS = env_int("A3_LOCKOUT_SECONDS", 900, minimum=1)
# django-axes keeps the counters in the database, so every process shares them.
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_VERBOSE = False  # no banner on every manage.py command
AXES_FAILURE_LIMIT = A3_LOCKOUT_FAILURES
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_COOLOFF_TIME = "apps.accounts.lockout.lockout_window"
# Counter rows expire one by one: a client with a short window never sweeps away the rows
# that hold another client's longer lockout.
AXES_USE_ATTEMPT_EXPIRATION = True
# An attempt refused during a lockout is not counted, so the announced end time holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "apps.accounts.lockout.lockout_username"
AXES_CLIENT_IP_CALLABLE = "apps.accounts.lockout.lockout_client_ip"
# AuthEvent is the sign-in record; axes' own access log would be a second, unpruned one.
AXES_DISABLE_ACCESS_LOG = True
# Masked in axes' log lines and in the request data it stores with a failure.
AXES_SENSITIVE_PARAMETERS = [
    "username",
    "ip_address",
    "email",
    "password",
    "otp",
    "token",
    "csrfmiddlewaretoken",
]
# The sign-in views answer a lockout themselves (generic message, 429, Retry-After), so
# axes' response-rewriting middleware is not installed.
SILENCED_SYSTEM_CHECKS = ["axes.W002"]
A3_API_TOKEN_DEFAULT_DAYS = env_int("A3_API_TOKEN_DEFAULT_DAYS", 90, minimum=0)
A3_ALERT_RETENTION_DAYS = env_int("A3_ALERT_RETENTION_DAYS", 90, minimum=1)
# Password reset links (sent by mail) stay valid this long, and work once.
PASSWORD_RESET_TIMEOUT = env_int("A3_PASSWORD_RESET_SECONDS", 3600, minimum=300)
# The dashboard's address as people reach it. Links in mail are built on it, never on the
# request's Host header, which the client chooses.
A3_PUBLIC_URL = (env_str("A3_PUBLIC_URL") or f"http://{A3_HOSTNAME}:{A3_HTTP_LISTEN[1]}").rstrip("/")
if not A3_PUBLIC_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("A3_PUBLIC_URL must start with http:// or https://")

# --- Second factors (docs/authentication.md) -------------------------------------------
# Roles that must have a second factor; they are sent to enrolment before anything else.
# Mailbox users must too where their domain says so (Domain.require_mfa).
A3_MFA_REQUIRED_ROLES = env_list("A3_MFA_REQUIRED_ROLES", ["superadmin", "domain_admin"])
OTP_TOTP_ISSUER = env_str("A3_TOTP_ISSUER") or f"A3Mailer {A3_HOSTNAME}"
OTP_TOTP_THROTTLE_FACTOR = 1
OTP_STATIC_THROTTLE_FACTOR = 1

# --- Passkeys (WebAuthn) ------------------------------------------------------------------
# The relying party is the host name users reach the dashboard at; passkeys are bound to it.
OTP_WEBAUTHN_RP_ID = env_str("A3_WEBAUTHN_RP_ID") or A3_HOSTNAME
OTP_WEBAUTHN_RP_NAME = env_str("A3_WEBAUTHN_RP_NAME") or "A3Mailer"
# Browsers offer passkeys on secure origins only: https://, or plain http on localhost (the
# development default). Any other origin, such as https on a port other than 443, is listed in
# A3_WEBAUTHN_ALLOWED_ORIGINS; a plain-http origin on another name would fail the library's
# system check and stop the server from starting.
OTP_WEBAUTHN_ALLOWED_ORIGINS = env_list("A3_WEBAUTHN_ALLOWED_ORIGINS", []) or [
    f"https://{OTP_WEBAUTHN_RP_ID}",
    *([f"http://localhost:{A3_HTTP_LISTEN[1]}"] if OTP_WEBAUTHN_RP_ID == "localhost" else []),
]
# Passkeys sign in on their own (they are both factors); the library then also requires
# discoverable credentials at registration, so every passkey can do that.
OTP_WEBAUTHN_ALLOW_PASSWORDLESS_LOGIN = True

# --- Single sign-on -----------------------------------------------------------------------
# Identity providers are rows of accounts.SsoProvider, managed on the dashboard and at
# /api/v1/sso-providers/ (docs/authentication.md). One OpenID Connect provider can also be
# described here; `manage.py sso_provider_sync` writes it to the database (slug "oidc").
A3_OIDC_ISSUER = env_str("A3_OIDC_ISSUER").strip()
A3_OIDC_CLIENT_ID = env_str("A3_OIDC_CLIENT_ID").strip()
A3_OIDC_CLIENT_SECRET = env_secret("A3_OIDC_CLIENT_SECRET")
A3_OIDC_NAME = env_str("A3_OIDC_NAME", "Single sign-on").strip()
# What counts as a second factor asserted by a provider trusted for MFA: any of these `amr`
# values (RFC 8176) in the ID token, or an `acr` (OIDC) / AuthnContextClassRef (SAML) listed.
A3_SSO_MFA_AMR = env_list("A3_SSO_MFA_AMR", ["mfa", "otp", "hwk", "swk"])
A3_SSO_MFA_ACR = env_list(
    "A3_SSO_MFA_ACR",
    [
        "http://schemas.openid.net/pape/policies/2007/06/multi-factor",
        "https://refeds.org/profile/mfa",
        "http://schemas.microsoft.com/claims/multipleauthn",
        "phr",
        "phrh",
    ],
)
# SAML service provider. The entity ID defaults to the metadata URL as it was reached; set it
# when the dashboard has more than one name. The optional certificate and key (PEM files) sign
# our AuthnRequests and are published in the metadata.
A3_SAML_SP_ENTITY_ID = env_str("A3_SAML_SP_ENTITY_ID").strip()
A3_SAML_SP_CERT = env_str("A3_SAML_SP_CERT")
A3_SAML_SP_KEY = env_str("A3_SAML_SP_KEY")
if bool(A3_SAML_SP_CERT) != bool(A3_SAML_SP_KEY):
    raise ImproperlyConfigured("A3_SAML_SP_CERT and A3_SAML_SP_KEY must be set together")
# social-auth runs the identity checks; apps/accounts/sso/pipeline.py holds our steps, and
# apps/accounts/sso/flow.py starts the session through accounts.services.login_complete.
SOCIAL_AUTH_PIPELINE = [
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "apps.accounts.sso.pipeline.identity_read",
    "social_core.pipeline.social_auth.social_user",
    "apps.accounts.sso.pipeline.account_resolve",
    "social_core.pipeline.social_auth.associate_user",
    "apps.accounts.sso.pipeline.roles_apply",
    "apps.accounts.sso.pipeline.assurance_read",
]
SOCIAL_AUTH_LOGIN_ERROR_URL = "accounts:login"
SOCIAL_AUTH_REQUESTS_TIMEOUT = 10

# --- Security headers and cookies ------------------------------------------------------
A3_SECURE_COOKIES = env_bool("A3_SECURE_COOKIES", True)
SESSION_COOKIE_SECURE = A3_SECURE_COOKIES
CSRF_COOKIE_SECURE = A3_SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("A3_SESSION_AGE_SECONDS", 8 * 3600, minimum=300)
SESSION_COOKIE_NAME = "a3_session"
CSRF_COOKIE_NAME = "a3_csrftoken"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("A3_HTTPS_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("A3_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
if env_bool("A3_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("A3_MAX_REQUEST_BYTES", 1_048_576, minimum=1024)

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "frame-src": [SELF],
        "frame-ancestors": [NONE],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
    }
}

# --- Static files ----------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = A3_DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the finders so that `serve` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- I18N ------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("A3_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- REST API --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.api.parsers.LimitedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_RATES": {"auth": env_str("A3_AUTH_THROTTLE_RATE", "30/min")},
    # Throttle by the peer address, never by a client-supplied X-Forwarded-For, unless a
    # trusted proxy sits in front (A3_BEHIND_PROXY).
    "NUM_PROXIES": 1 if env_bool("A3_BEHIND_PROXY", False) else 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "A3Mailer API",
    "DESCRIPTION": (
        "Manage domains, mailboxes, aliases and alerts. Authenticate with "
        "`Authorization: Bearer <token>` from `POST /api/v1/auth/token/`. Errors are JSON "
        'objects `{"code", "detail", "fields"}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "AlertLevelEnum": "apps.alerts.models.Alert.Level",
        "UserRoleEnum": "apps.accounts.models.User.Role",
        "SsoProviderKindEnum": "apps.accounts.models.SsoProvider.Kind",
        "LegalHoldScopeEnum": "apps.compliance.models.LegalHold.Scope",
        "FolderSpecialUseEnum": "apps.mailboxes.models.Folder.SpecialUse",
    },
}

# --- Email (outbound relay arrives later; until then Django's backend setting) ----------
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", f"a3mailer@{A3_HOSTNAME}")

# --- Logging ---------------------------------------------------------------------------
A3_LOG_FORMAT = env_str("A3_LOG_FORMAT", "json")
if A3_LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured("A3_LOG_FORMAT must be json or text")
A3_LOG_LEVEL = env_str("A3_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "apps.core.logging.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "ts",
        },
        "text": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": A3_LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": A3_LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "uvicorn.access": {"level": "WARNING"},
        "celery": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        "mail.log": {"level": "WARNING"},  # aiosmtpd logs every command at INFO
    },
}

# --- Prometheus ------------------------------------------------------------------------
PROMETHEUS_METRIC_NAMESPACE = ""
PROMETHEUS_EXPORT_MIGRATIONS = False

# --- Compliance ------------------------------------------------------------------------
# Asked before mail is deleted for good (expunge, delete from Trash, retention, erasure):
# each returns the message ids that must be kept (apps/mailboxes/services/mailitems.py).
A3_DELETION_GUARDS = ["apps.compliance.services.holds.deletion_guard"]
# Asked by mailbox pages whether a mailbox's mail is under legal hold (shown as a badge).
A3_MAILBOX_HOLD_CHECKS = ["apps.compliance.services.holds.mailbox_is_held"]
# Called by submission_accept inside its transaction, after the message is queued:
# check(*, message, raw, sender_domain_id, remote_recipients) may hold its queue items (DLP).
A3_SUBMISSION_CHECKS = ["apps.compliance.services.dlp.outbound_dlp_check"]
# Audit log (docs/compliance.md). The lower apps write events through apps/core/audit.py,
# which imports this recorder lazily so they never import compliance themselves.
A3_AUDIT_RECORDER = "apps.compliance.services.audit.audit_record"
# Key of the keyed hashes that stand in for personal values (unset: derived from the secret key).
A3_AUDIT_PSEUDONYM_KEY = env_secret("A3_AUDIT_PSEUDONYM_KEY")
A3_AUDIT_RETENTION_DAYS = env_int("A3_AUDIT_RETENTION_DAYS", 2555, minimum=1)
# SIEM streaming, off unless set: "udp://host:514" or "tcp://host:514" (RFC 5424), and a
# webhook that receives JSON batches signed with HMAC-SHA256 of A3_AUDIT_WEBHOOK_SECRET.
A3_AUDIT_SYSLOG = env_str("A3_AUDIT_SYSLOG").strip()
if A3_AUDIT_SYSLOG and not A3_AUDIT_SYSLOG.startswith(("udp://", "tcp://")):
    raise ImproperlyConfigured("A3_AUDIT_SYSLOG must be udp://host:port or tcp://host:port")
A3_AUDIT_WEBHOOK_URL = env_str("A3_AUDIT_WEBHOOK_URL").strip()
A3_AUDIT_WEBHOOK_SECRET = env_secret("A3_AUDIT_WEBHOOK_SECRET")
if A3_AUDIT_WEBHOOK_URL and not A3_AUDIT_WEBHOOK_SECRET:
    raise ImproperlyConfigured("A3_AUDIT_WEBHOOK_URL needs A3_AUDIT_WEBHOOK_SECRET")
A3_AUDIT_STREAM_BATCH = env_int("A3_AUDIT_STREAM_BATCH", 200, minimum=1)
# GDPR exports: how long a finished archive can be downloaded before it is deleted.
A3_EXPORT_LINK_HOURS = env_int("A3_EXPORT_LINK_HOURS", 48, minimum=1)

# --- Threat detection and quarantine (docs/threats.md) ---------------------------------
# Post-DATA scan stages, in order (each adds a score and reasons; see apps/threats/stages).
A3_SCAN_STAGES = [
    "apps.threats.stages.auth.authentication_stage",
    "apps.threats.stages.content.gtube_stage",
    "apps.threats.stages.content.rules_stage",
    "apps.threats.stages.attachments.attachments_stage",
    "apps.threats.stages.malware.malware_stage",
    "apps.threats.stages.external.clamav_stage",
    "apps.threats.stages.urls.urls_stage",
    "apps.threats.stages.bayes.bayes_stage",
    "apps.threats.stages.external.rspamd_stage",
    "apps.threats.stages.external.spamd_stage",
]
# SMTP-time checks on the MX (before 250): DNSBL at connection, SPF at MAIL FROM.
A3_SMTP_CHECKS = "apps.threats.smtp_checks"
# Every stage's time limit; a stage that overruns counts as a scanner failure.
A3_SCAN_STAGE_TIMEOUT_SECONDS = env_float("A3_SCAN_STAGE_TIMEOUT_SECONDS", 10.0)
A3_SCAN_DNS_TIMEOUT_SECONDS = env_float("A3_SCAN_DNS_TIMEOUT_SECONDS", 3.0)
# Server-wide verdict thresholds (a domain's policy overrides them).
A3_SPAM_HEADER_SCORE = env_float("A3_SPAM_HEADER_SCORE", 5.0)
A3_SPAM_JUNK_SCORE = env_float("A3_SPAM_JUNK_SCORE", 6.0)
A3_SPAM_QUARANTINE_SCORE = env_float("A3_SPAM_QUARANTINE_SCORE", 10.0)
A3_SPAM_REJECT_SCORE = env_float("A3_SPAM_REJECT_SCORE", 15.0)
A3_QUARANTINE_DAYS = env_int("A3_QUARANTINE_DAYS", 30, minimum=1)
# DNS block lists: connection IPs (DNSBL) and link domains (URIBL), comma-separated zones.
A3_DNSBL_ZONES = env_list("A3_DNSBL_ZONES", [])
A3_URIBL_ZONES = env_list("A3_URIBL_ZONES", [])
# Clients never looked up in DNSBLs: loopback and private networks (local relays).
A3_DNSBL_SKIP_NETWORKS = env_list(
    "A3_DNSBL_SKIP_NETWORKS",
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ],
)
# Optional engines, off unless set: clamd ("/run/clamav/clamd.ctl" or "host:port"),
# Rspamd's controller/normal worker ("http://127.0.0.1:11333"), spamd ("127.0.0.1:783").
A3_CLAMD_ADDRESS = env_str("A3_CLAMD_ADDRESS")
A3_RSPAMD_URL = env_str("A3_RSPAMD_URL")
A3_SPAMD_ADDRESS = env_str("A3_SPAMD_ADDRESS")
# What an engine's score counts for in ours (its points times the weight; 0 switches
# its scoring off but keeps its findings and categories).
A3_RSPAMD_WEIGHT = env_float("A3_RSPAMD_WEIGHT", 1.0)
A3_SPAMD_WEIGHT = env_float("A3_SPAMD_WEIGHT", 1.0)
# Attachment policy (docs/threats.md): blocked extensions and MIME types, server-wide.
A3_BLOCKED_EXTENSIONS = env_list(
    "A3_BLOCKED_EXTENSIONS",
    [
        *("exe", "scr", "com", "pif", "bat", "cmd", "cpl", "msi", "msp", "jar", "js", "jse"),
        *("vbs", "vbe", "wsf", "wsh", "hta", "lnk", "ps1", "reg", "iso", "img", "vhd"),
    ],
)
A3_BLOCKED_MIME_TYPES = env_list(
    "A3_BLOCKED_MIME_TYPES",
    ["application/x-msdownload", "application/x-dosexec", "application/x-ms-installer", "application/hta"],
)
# Scanning bounds: past these a message is "unscannable" (the policy decides what happens).
A3_SCAN_MAX_PARTS = env_int("A3_SCAN_MAX_PARTS", 1000, minimum=10)
A3_SCAN_MAX_DEPTH = env_int("A3_SCAN_MAX_DEPTH", 20, minimum=2)
A3_SCAN_MAX_ARCHIVE_BYTES = env_int("A3_SCAN_MAX_ARCHIVE_BYTES", 100 * 1024 * 1024, minimum=1024)
A3_SCAN_MAX_ARCHIVE_RATIO = env_int("A3_SCAN_MAX_ARCHIVE_RATIO", 100, minimum=2)
A3_SCAN_MAX_HEADER_BYTES = env_int("A3_SCAN_MAX_HEADER_BYTES", 256 * 1024, minimum=8192)
# Digest links: how long a one-click link in a quarantine digest works.
A3_DIGEST_LINK_HOURS = env_int("A3_DIGEST_LINK_HOURS", 72, minimum=1)
# Behaviour analysis of sending accounts (apps/threats/services/behaviour.py): an hour
# with more messages, or more never-seen recipients, than the larger of the floor and
# SPIKE_FACTOR times the mailbox's usual hour suspends its submission; so does a bounce
# ratio of BOUNCE_RATIO over at least BOUNCE_MIN_RECIPIENTS recipients in two hours.
A3_BEHAVIOUR_MIN_MESSAGES = env_int("A3_BEHAVIOUR_MIN_MESSAGES", 50, minimum=1)
A3_BEHAVIOUR_SPIKE_FACTOR = env_float("A3_BEHAVIOUR_SPIKE_FACTOR", 10.0)
A3_BEHAVIOUR_NEW_RECIPIENTS = env_int("A3_BEHAVIOUR_NEW_RECIPIENTS", 100, minimum=1)
A3_BEHAVIOUR_BOUNCE_RATIO = env_float("A3_BEHAVIOUR_BOUNCE_RATIO", 0.5)
A3_BEHAVIOUR_BOUNCE_MIN_RECIPIENTS = env_int("A3_BEHAVIOUR_BOUNCE_MIN_RECIPIENTS", 20, minimum=1)
# Distributed password guessing: this many failed sign-ins for one account from at least
# this many addresses within 15 minutes raise a threats.auth_anomaly alert.
A3_BEHAVIOUR_AUTH_FAILURES = env_int("A3_BEHAVIOUR_AUTH_FAILURES", 10, minimum=2)
A3_BEHAVIOUR_AUTH_IPS = env_int("A3_BEHAVIOUR_AUTH_IPS", 5, minimum=2)
# Hooks the lower apps call by dotted path (they never import threats): submission_accept
# records each accepted message; the submission listener asks whether a mailbox may send
# (check(*, mailbox_id) -> SMTP reply or None); remote bounces of submitted mail are
# counted; successful sign-ins record the user's network.
A3_SUBMISSION_CHECKS = [*A3_SUBMISSION_CHECKS, "apps.threats.services.behaviour.submission_observe"]
A3_SUBMISSION_SENDER_CHECKS = ["apps.threats.services.behaviour.submission_suspended_problem"]
# Submitted mail is scanned for malware before it is taken (a refusal, not a bounce).
A3_SUBMISSION_CONTENT_CHECKS = ["apps.threats.services.outbound.outbound_malware_problem"]
A3_BOUNCE_OBSERVERS = ["apps.threats.services.behaviour.bounces_observe"]
A3_LOGIN_OBSERVERS = ["apps.threats.services.behaviour.login_observe"]
# Webmail: "Report spam" / "Not spam" on every message (templates the message's action bar
# includes; see apps/mailboxes/templatetags/webmail_actions.py).
A3_WEBMAIL_MESSAGE_ACTIONS = ["threats/partials/webmail_spam_actions.html"]
# Scanning off, for a server behind a filtering gateway that has scanned everything
# already: accepted mail goes straight to delivery, with no SMTP-time checks, no verdicts,
# no stamped headers and no malware check of submissions. Mail held earlier can still be
# reviewed and released (the verdict stage then only limits a release to the released
# mailboxes), and behaviour analysis of sending accounts stays on.
A3_SCANNING = env_bool("A3_SCANNING", True)
if not A3_SCANNING:
    A3_SMTP_CHECKS = ""
    A3_ACCEPTED_MESSAGE_TASK = "apps.mailboxes.tasks.message_deliver_task"
    A3_SUBMISSION_CONTENT_CHECKS = []
