from django.contrib import admin
from django.urls import path

from apps.operators.views import operations

urlpatterns = [
    # Inside the admin: login and staff status required like every admin page.
    path("", admin.site.admin_view(operations), name="operations"),
]
