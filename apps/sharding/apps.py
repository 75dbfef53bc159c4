from django.apps import AppConfig


class ShardingConfig(AppConfig):
    name = "apps.sharding"
    label = "sharding"
