"""``path("health/", include("eventbroker.contrib.django.urls"))`` serves the health view."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [path("", views.health, name="eventbroker-health")]
