from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OperatorsConfig(AppConfig):
    name = "apps.operators"
    label = "operators"
    verbose_name = "Operators"

    def ready(self) -> None:
        from django.contrib import admin

        from apps.operators.roles import ensure_roles_after_migrate

        # After every migrate and every test flush of `default`: groups are data, flush empties them.
        post_migrate.connect(ensure_roles_after_migrate, dispatch_uid="operators.ensure_roles")
        admin.site.site_header = "shardwallet operations"
        admin.site.site_title = "shardwallet admin"
        admin.site.index_template = "admin/operators/index.html"
        admin.site.site_url = "/v1/docs/"  # "view site": the API's docs (there is no other site)
