import django_filters
from django.db.models import Q

from apps.mailboxes.models import Alias, Domain, Mailbox


class DomainFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains")

    class Meta:
        model = Domain
        fields = ["name", "is_active"]


class MailboxFilter(django_filters.FilterSet):
    domain = django_filters.CharFilter(field_name="domain__name", lookup_expr="iexact")
    owner = django_filters.CharFilter(field_name="owner__email", lookup_expr="iexact")
    address = django_filters.CharFilter(field_name="address", lookup_expr="icontains")

    class Meta:
        model = Mailbox
        fields = ["domain", "owner", "address", "is_active"]


class AliasFilter(django_filters.FilterSet):
    domain = django_filters.CharFilter(field_name="domain__name", lookup_expr="iexact")
    address = django_filters.CharFilter(field_name="address", lookup_expr="icontains")
    destination = django_filters.CharFilter(method="filter_destination")
    is_catch_all = django_filters.BooleanFilter(method="filter_catch_all")

    class Meta:
        model = Alias
        fields = ["domain", "address", "is_active"]

    def filter_destination(self, queryset, name, value):
        return queryset.filter(destinations__address__iexact=value.strip()).distinct()

    def filter_catch_all(self, queryset, name, value):
        condition = Q(local_part="")
        return queryset.filter(condition) if value else queryset.exclude(condition)
