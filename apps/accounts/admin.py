from django.contrib import admin

from apps.accounts.models import ApiClient


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "key_prefix", "is_active", "rate_limit_per_second", "created_at"]
    search_fields = ["name", "key_prefix"]
    readonly_fields = ["key_prefix", "key_digest", "created_at"]
