from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.mailboxes.api.messages import MailboxFolderViewSet, MessageViewSet
from apps.mailboxes.api.views import AliasViewSet, DomainViewSet, MailboxViewSet

router = SimpleRouter()
router.register("domains", DomainViewSet, basename="domain")
router.register("mailboxes", MailboxViewSet, basename="mailbox")
router.register("mailboxes", MailboxFolderViewSet, basename="mailbox-folders")
router.register("aliases", AliasViewSet, basename="alias")
router.register("messages", MessageViewSet, basename="message")
urlpatterns = [
    *router.urls,
    # Downloads as the public contract spells them: no trailing slash, like files.
    path("messages/<str:pk>/raw", MessageViewSet.as_view({"get": "raw"}), name="message-raw"),
    path(
        "messages/<str:pk>/attachments/<str:index>",
        MessageViewSet.as_view({"get": "attachment"}),
        name="message-attachment",
    ),
]
