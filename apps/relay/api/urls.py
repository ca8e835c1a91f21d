from rest_framework.routers import SimpleRouter

from apps.relay.api.app_passwords import AppPasswordViewSet
from apps.relay.api.dkim import DkimKeyViewSet
from apps.relay.api.queue import QueueItemViewSet
from apps.relay.api.transports import TransportRuleViewSet

router = SimpleRouter()
router.register("dkim-keys", DkimKeyViewSet, basename="dkim-key")
router.register("queue", QueueItemViewSet, basename="queue-item")
router.register("app-passwords", AppPasswordViewSet, basename="app-password")
router.register("transport-rules", TransportRuleViewSet, basename="transport-rule")
urlpatterns = [*router.urls]
