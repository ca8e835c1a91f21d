from rest_framework import serializers

from apps.accounts.models import ApiToken, AuthEvent, User
from apps.core.api.serializers import StrictInputSerializer


class TokenObtainInputSerializer(StrictInputSerializer):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    otp = serializers.CharField(max_length=16, required=False, allow_blank=True)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    expires_in_days = serializers.IntegerField(required=False, min_value=0, max_value=3650)


class TokenCreateInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(required=False, min_value=0, max_value=3650)


class ApiTokenOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class TokenIssuedOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The bearer secret. Shown once; only its hash is stored.")
    id = serializers.IntegerField()
    name = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)


class UserOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "full_name", "role", "is_active", "date_joined", "last_login"]
        read_only_fields = fields


class UserCreateInputSerializer(StrictInputSerializer):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=1024, trim_whitespace=False, required=False)
    role = serializers.ChoiceField(choices=User.Role.choices, default=User.Role.USER)
    full_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")


class UserUpdateInputSerializer(StrictInputSerializer):
    full_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
    role = serializers.ChoiceField(choices=User.Role.choices, required=False)
    is_active = serializers.BooleanField(required=False)
    password = serializers.CharField(max_length=1024, trim_whitespace=False, required=False)


class AuthEventOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuthEvent
        fields = ["id", "kind", "user", "email", "ip", "user_agent", "channel", "detail", "created_at"]
        read_only_fields = fields


class LockoutOutputSerializer(serializers.Serializer):
    username = serializers.CharField(help_text="The locked login name; empty when an address is locked.")
    ip = serializers.IPAddressField(allow_null=True, help_text="The locked address; null when a name is.")
    failures = serializers.IntegerField(help_text="Failed attempts counted towards the lockout.")
    channel = serializers.ChoiceField(choices=["web", "api", "smtp"], help_text="Where it was tripped.")
    locked_until = serializers.DateTimeField()


class LockoutClearInputSerializer(StrictInputSerializer):
    username = serializers.CharField(max_length=254, required=False)
    ip = serializers.IPAddressField(required=False)

    def validate(self, attrs: dict) -> dict:
        if ("username" in attrs) == ("ip" in attrs):
            raise serializers.ValidationError("Give either a username or an ip.")
        return attrs


class LockoutClearOutputSerializer(serializers.Serializer):
    removed = serializers.IntegerField(help_text="Failure counters removed.")
