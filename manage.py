#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")
    from django.core.management import execute_from_command_line

    from wallet_project.environment import ConfigurationError

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as exc:  # a deployment's missing variable: its name, not a traceback
        sys.exit(f"shardwallet: configuration error: {exc}")


if __name__ == "__main__":
    main()
