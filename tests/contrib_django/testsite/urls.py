from __future__ import annotations

from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from . import views

urlpatterns = [
    path("health/", include("eventbroker.contrib.django.urls")),
    path("cache/<str:key>", views.read),
    path("cache/<str:key>/set", csrf_exempt(views.write)),
]
