from django.apps import AppConfig


class ThreatsConfig(AppConfig):
    name = "apps.threats"
    label = "threats"
    verbose_name = "Threat detection and quarantine"
