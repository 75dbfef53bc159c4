from django.apps import AppConfig


class TransfersConfig(AppConfig):
    name = "apps.transfers"
    label = "transfers"

    def ready(self) -> None:
        from apps.sharding.mover import after_switch_hooks
        from apps.transfers.tasks import drain_moved_transfers

        after_switch_hooks.append(drain_moved_transfers)
