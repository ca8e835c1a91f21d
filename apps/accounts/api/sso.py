"""REST API of identity providers for single sign-on (superadmins): /api/v1/sso-providers/.
The client secret is write-only; responses say whether one is stored (has_secret)."""

from __future__ import annotations

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.mixins import ListModelMixin, RetrieveModelMixin
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from apps.accounts.api.permissions import IsSuperadmin
from apps.accounts.models import SsoProvider, User
from apps.accounts.sso import saml, selectors, services
from apps.core.api.errors import ErrorSerializer
from apps.core.api.serializers import StrictInputSerializer

_ROLE_MAPPING_HELP = (
    'Group name → role. "*" applies when none of the user\'s groups is listed; it never demotes a superadmin.'
)


class SsoProviderOutputSerializer(serializers.ModelSerializer):
    has_secret = serializers.SerializerMethodField(help_text="Whether a client secret is stored.")
    jit_domains = serializers.ListField(child=serializers.CharField())
    role_mapping = serializers.DictField(
        child=serializers.ChoiceField(choices=User.Role.choices), help_text=_ROLE_MAPPING_HELP
    )
    callback_url = serializers.SerializerMethodField(
        help_text="Where the provider sends the browser back: the OpenID Connect redirect URI to "
        "register, or for SAML the shared assertion consumer service."
    )

    class Meta:
        model = SsoProvider
        fields = [
            "id",
            "slug",
            "name",
            "kind",
            "enabled",
            "issuer",
            "client_id",
            "has_secret",
            "scopes",
            "idp_entity_id",
            "idp_sso_url",
            "idp_x509_cert",
            "jit_provisioning",
            "jit_domains",
            "groups_claim",
            "role_mapping",
            "trust_idp_mfa",
            "callback_url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_has_secret(self, provider: SsoProvider) -> bool:
        return bool(provider.client_secret)

    @extend_schema_field(OpenApiTypes.URI)
    def get_callback_url(self, provider: SsoProvider) -> str:
        if provider.kind == SsoProvider.Kind.SAML:
            path = saml.acs_path()
        else:
            path = reverse("accounts:sso-complete", args=[provider.slug])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class SsoProviderCreateInputSerializer(StrictInputSerializer):
    slug = serializers.SlugField(max_length=40)
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=SsoProvider.Kind.choices)
    enabled = serializers.BooleanField(default=True)
    issuer = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="OpenID Connect issuer (discovery at <issuer>/.well-known/openid-configuration). "
        "Google: https://accounts.google.com (the default); Microsoft Entra: "
        "https://login.microsoftonline.com/<tenant ID>/v2.0.",
    )
    client_id = serializers.CharField(max_length=255, required=False, allow_blank=True)
    client_secret = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="Write-only; stored encrypted. An empty string removes it.",
    )
    scopes = serializers.CharField(
        max_length=255, required=False, help_text='Space-separated; "openid" is added.'
    )
    idp_entity_id = serializers.CharField(max_length=255, required=False, allow_blank=True)
    idp_sso_url = serializers.CharField(max_length=200, required=False, allow_blank=True)
    idp_x509_cert = serializers.CharField(
        max_length=20000,
        required=False,
        allow_blank=True,
        help_text="The SAML IdP's signing certificate, PEM.",
    )
    jit_provisioning = serializers.BooleanField(
        required=False, help_text="Create accounts on first sign-in, for addresses in jit_domains only."
    )
    jit_domains = serializers.ListField(
        child=serializers.CharField(max_length=253), required=False, max_length=100
    )
    groups_claim = serializers.CharField(max_length=100, required=False, allow_blank=True)
    role_mapping = serializers.DictField(
        child=serializers.ChoiceField(choices=User.Role.choices), required=False, help_text=_ROLE_MAPPING_HELP
    )
    trust_idp_mfa = serializers.BooleanField(
        required=False, help_text="Count a sign-in as MFA when the provider asserts it (amr/acr)."
    )


class SsoProviderUpdateInputSerializer(SsoProviderCreateInputSerializer):
    slug = serializers.SlugField(max_length=40, required=False)
    name = serializers.CharField(max_length=100, required=False)
    kind = serializers.ChoiceField(choices=SsoProvider.Kind.choices, required=False)
    enabled = serializers.BooleanField(required=False)


class SsoProviderViewSet(ListModelMixin, RetrieveModelMixin, GenericViewSet):
    """Identity providers for single sign-on (OpenID Connect, Google, Microsoft Entra,
    SAML 2.0). Superadmins only."""

    permission_classes = [IsSuperadmin]
    serializer_class = SsoProviderOutputSerializer
    filterset_fields = ["kind", "enabled"]
    ordering_fields = ["name", "slug"]
    search_fields = ["name", "slug"]

    def get_queryset(self) -> QuerySet[SsoProvider]:
        return selectors.sso_provider_list(actor=self.request.user)

    @extend_schema(
        request=SsoProviderCreateInputSerializer,
        responses={201: SsoProviderOutputSerializer, 400: ErrorSerializer, 409: ErrorSerializer},
    )
    def create(self, request: Request) -> Response:
        data = SsoProviderCreateInputSerializer.validated(request.data)
        provider = services.sso_provider_create(actor=request.user, values=data)
        return Response(self.get_serializer(provider).data, status=201)

    @extend_schema(
        request=SsoProviderUpdateInputSerializer,
        responses={200: SsoProviderOutputSerializer, 400: ErrorSerializer, 409: ErrorSerializer},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        data = SsoProviderUpdateInputSerializer.validated(request.data)
        provider = services.sso_provider_update(actor=request.user, provider=self.get_object(), values=data)
        return Response(self.get_serializer(provider).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        services.sso_provider_delete(actor=request.user, provider=self.get_object())
        return Response(status=204)
