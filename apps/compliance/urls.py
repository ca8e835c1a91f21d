from django.urls import path  # noqa: F401 - page modules add their paths below

app_name = "compliance"
urlpatterns: list = []
