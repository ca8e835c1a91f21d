from django.apps import AppConfig


class RelayConfig(AppConfig):
    name = "apps.relay"
    label = "relay"
    verbose_name = "SMTP relay"

    def ready(self) -> None:
        from apps.core.roles import Role, role_register
        from apps.relay.roles import SmtpRunner, SubmissionRunner

        role_register(Role("smtp", "SMTP listener for inbound mail (MX)", SmtpRunner))
        role_register(Role("submission", "SMTP submission for authenticated users", SubmissionRunner))
