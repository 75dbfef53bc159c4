"""PostgreSQL backend that counts database errors per alias (see base.py). ENGINE = "apps.observability.backend"."""
