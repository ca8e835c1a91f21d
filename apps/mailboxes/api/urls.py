from rest_framework.routers import SimpleRouter

from apps.mailboxes.api.views import AliasViewSet, DomainViewSet, MailboxViewSet

router = SimpleRouter()
router.register("domains", DomainViewSet, basename="domain")
router.register("mailboxes", MailboxViewSet, basename="mailbox")
router.register("aliases", AliasViewSet, basename="alias")
urlpatterns = router.urls
