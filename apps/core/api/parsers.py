"""JSON request parsing with a size limit that answers in the API's error shape."""

from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import BaseParser, get_encoding
from rest_framework.renderers import JSONRenderer
from rest_framework.settings import api_settings
from rest_framework.utils import json


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class LimitedJSONParser(BaseParser):
    """DRF's JSON parsing, but a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 API error.

    Deliberately not a JSONParser subclass: DRF reads `request.body` before calling one,
    and Django's size check there escapes the API's exception handler as an HTML 400."""

    media_type = "application/json"
    renderer_class = JSONRenderer
    strict = api_settings.STRICT_JSON

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            raw = stream.read()
        else:
            too_large = RequestTooLarge(f"The request body is larger than {limit} bytes.")
            if _declared_length(parser_context) > limit:
                raise too_large
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise too_large
        encoding = get_encoding(parser_context)
        try:
            parse_constant = json.strict_constant if self.strict else None
            return json.loads(raw.decode(encoding), parse_constant=parse_constant)
        except ValueError as exc:  # includes UnicodeDecodeError
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


def _declared_length(parser_context: dict) -> int:
    request = parser_context.get("request")
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
    except (TypeError, ValueError):
        return 0
