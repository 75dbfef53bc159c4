from __future__ import annotations

from django.db import models


class ApiClient(models.Model):
    """A fintech back end calling the API. Lives on `default`; wallets store its id.

    Only a SHA-256 digest of the key is stored: keys are 256-bit random secrets,
    so a fast digest is as safe as a slow password hash and costs nothing per request.
    """

    name = models.CharField(max_length=200)
    key_prefix = models.CharField(max_length=16, help_text="First characters of the key, to recognise it.")
    key_digest = models.CharField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # This client's own rate limit (apps.accounts.throttling); empty: the deployment's default.
    rate_limit_per_second = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per second; empty for the default, 0 for no limit."
    )
    rate_limit_burst = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests at once after a quiet spell; empty for the default."
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    # DRF treats request.user as a user; an API client is always an authenticated one.
    @property
    def is_authenticated(self) -> bool:
        return True
