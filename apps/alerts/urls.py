from django.urls import path

from apps.alerts import views

app_name = "alerts"
urlpatterns = [
    path("", views.alert_list_view, name="list"),
    path("<int:alert_id>/acknowledge/", views.alert_acknowledge_view, name="acknowledge"),
]
