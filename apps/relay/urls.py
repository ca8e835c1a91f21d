from django.urls import path  # noqa: F401 - each page module adds its paths below

app_name = "relay"
urlpatterns: list = []
