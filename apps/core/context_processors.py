from django.conf import settings
from django.http import HttpRequest


def a3mailer(request: HttpRequest) -> dict:
    return {"A3_HOSTNAME": settings.A3_HOSTNAME}
