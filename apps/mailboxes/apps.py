from django.apps import AppConfig


class MailboxesConfig(AppConfig):
    name = "apps.mailboxes"
    label = "mailboxes"
    verbose_name = "Mailboxes"

    def ready(self) -> None:
        from apps.mailboxes import metrics

        metrics.register()
