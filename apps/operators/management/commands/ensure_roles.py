from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.operators.roles import ensure_roles


class Command(BaseCommand):
    help = "Create or repair the staff groups operators, viewers and auditors with their permissions (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        for group, count in ensure_roles().items():
            self.stdout.write(f"{group}: {count} permissions")
