from rest_framework import serializers

from apps.alerts.models import Alert


class AlertOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "level", "message", "data", "domain_id", "created_at", "acknowledged_at"]
        read_only_fields = fields
