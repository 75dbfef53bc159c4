"""Django admin over every shard, so an operator sees one database.

Django's ChangeList assumes one queryset on one database. Here the changelist builds its
queryset as usual (filters, search) but never evaluates it: `ShardedQuerySequence` runs
it on each shard in scope, newest first by id (ids are time-ordered UUIDv7), merges the
results and slices them. The stock Paginator works on it unchanged: `count()` sums the
per-shard counts (exact where a shard holds few rows, the planner's estimate where it holds
many: an exact count of millions of rows is a scan per page view), and page n fetches its
`offset + limit` newest rows from each shard, so every row appears on exactly one page.
Column sorting is off: one global order.

An exact id in the search box goes straight to its shard (`alias_for_id`); other searches
and filters fan out. Detail pages load from the row's shard. Everything is read-only:
money moves only through services.
"""

from __future__ import annotations

import heapq
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

from django.contrib import admin, messages
from django.contrib.admin.options import ShowFacets
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet, PermissionDenied
from django.db import InterfaceError, OperationalError, connections
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from apps.accounts.selectors import api_client_ids_matching, api_client_names
from apps.common.db import EXACT_COUNT_UP_TO
from apps.ledger.currencies import format_minor
from apps.sharding.ids import InvalidId, parse_id
from apps.sharding.placement import BUCKET_COLUMNS
from apps.sharding.routing import alias_for_id, shard_aliases, use_shard
from apps.sharding.shardmap import ShardMapError

_T = TypeVar("_T")


def served_only(queryset: QuerySet) -> QuerySet:
    """Rows of the buckets each shard serves: a move's copy, arriving or left behind, is listed once."""
    table = queryset.model._meta.db_table
    column = BUCKET_COLUMNS.get(table)
    if column is None:
        return queryset
    return queryset.extra(where=[f'sharding_serves("{table}"."{column}")'])  # noqa: S610 - fixed names


class ShardedQuerySequence:
    """An unevaluated queryset run on several shards, merged newest first by primary key.

    Sliceable and countable, which is all Django's Paginator needs. A slice [a:b] reads at
    most b rows from each shard; a count is one COUNT per shard. A shard that cannot be
    reached counts as empty and is named in `unreachable` (shared by clones), so an operator
    still sees the other shards when one is down, and is told what is missing.
    """

    ordered = True  # the Paginator warns about unordered input otherwise

    def __init__(self, queryset: QuerySet, aliases: Sequence[str], unreachable: set[str] | None = None) -> None:
        self.unserved = queryset
        self.queryset = served_only(queryset).order_by("-pk")
        self.aliases = list(aliases)
        self.unreachable = unreachable if unreachable is not None else set()
        self._count: int | None = None

    def _on_shard(self, alias: str, read: Callable[[QuerySet], _T], empty: _T) -> _T:
        if alias in self.unreachable:
            return empty
        try:
            return read(self.queryset.using(alias))
        except (OperationalError, InterfaceError):
            connections[alias].close()  # do not keep a broken persistent connection
            self.unreachable.add(alias)
            return empty

    def count(self) -> int:
        if self._count is None:
            self._count = sum(
                self._on_shard(alias, lambda qs, a=alias: self._count_on(a, qs), 0)  # type: ignore[misc]
                for alias in self.aliases
            )
        return self._count

    def _count_on(self, alias: str, queryset: QuerySet) -> int:
        estimate = planner_rows(self.unserved.order_by().using(alias))
        return estimate if estimate > EXACT_COUNT_UP_TO else queryset.count()

    def _merged(self, limit: int | None) -> Iterator[Model]:
        per_shard: list[list[Model]] = [
            self._on_shard(alias, lambda qs: list(qs if limit is None else qs[:limit]), []) for alias in self.aliases
        ]
        return heapq.merge(*per_shard, key=lambda row: row.pk, reverse=True)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, int):
            if key < 0:
                raise IndexError("negative indexes are not supported")
            rows = self[key : key + 1]
            if not rows:
                raise IndexError(key)
            return rows[0]
        if key.step not in (None, 1) or (key.start or 0) < 0 or (key.stop is not None and key.stop < 0):
            raise ValueError("only forward slices without a step are supported")
        start = key.start or 0
        if key.stop is not None and key.stop <= start:
            return []
        return list(itertools.islice(self._merged(key.stop), start, key.stop))

    def __iter__(self) -> Iterator[Model]:
        return self._merged(None)

    def _clone(self) -> ShardedQuerySequence:
        # ChangeList clones its queryset when one page shows everything.
        return ShardedQuerySequence(self.queryset, self.aliases, self.unreachable)

    def filter(self, *args: Any, **kwargs: Any) -> ShardedQuerySequence:
        return ShardedQuerySequence(self.queryset.filter(*args, **kwargs), self.aliases, self.unreachable)


def planner_rows(queryset: QuerySet) -> int:
    """PostgreSQL's estimate of the rows `queryset` returns (EXPLAIN: no rows are read). Taken
    without the served-buckets filter, whose selectivity the planner cannot know."""
    try:
        sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    except EmptyResultSet:  # a filter no row can match (e.g. a search for no known client)
        return 0
    with connections[queryset.db].cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def money_html(amount_minor: int, currency: str) -> SafeString:
    """An amount as an operator reads it, "25.00 USD", with the stored minor units beside it."""
    return format_html(
        '{} <span class="quiet">({} minor units)</span>', format_minor(amount_minor, currency), amount_minor
    )


class ShardFilter(admin.SimpleListFilter):
    """Restrict a changelist to one shard. The changelist reads the value to pick shards."""

    title = "shard"
    parameter_name = "shard"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(alias, alias) for alias in shard_aliases()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset  # not a WHERE clause: ShardedChangeList queries only the chosen shard


class ShardedValuesFilter(admin.SimpleListFilter):
    """Filter on the distinct values of a low-cardinality column, collected from every shard."""

    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values: set[str] = set()
        base = model_admin.model._default_manager.order_by()
        for alias in shard_aliases():
            try:
                values.update(base.using(alias).values_list(self.field_name, flat=True).distinct())
            except (OperationalError, InterfaceError):
                connections[alias].close()  # the changelist says which shard is missing
        return [(value, value) for value in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(**{self.field_name: self.value()})
        return queryset


class CurrencyFilter(ShardedValuesFilter):
    title = "currency"
    parameter_name = "currency"
    field_name = "currency"


class ShardedChangeList(ChangeList):
    """A ChangeList whose results come from every shard in scope (see ShardedQuerySequence)."""

    shard_aliases_in_scope: list[str]
    model_admin: ShardedModelAdmin

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.unreachable: set[str] = set()
        super().__init__(request, *args, **kwargs)
        if self.unreachable:
            messages.warning(
                request,
                f"Unreachable, so missing from this list: {', '.join(sorted(self.unreachable))}.",
            )

    def get_ordering(self, request: HttpRequest, queryset: QuerySet) -> list[Any]:
        return ["-pk"]

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        queryset = super().get_queryset(request, exclude_parameters)
        aliases = self.model_admin.shards_for_search(self.query)
        chosen = next((spec.value() for spec in self.filter_specs if isinstance(spec, ShardFilter)), None)
        if chosen:
            aliases = [alias for alias in aliases if alias == chosen]
        self.shard_aliases_in_scope = aliases
        return ShardedQuerySequence(queryset, aliases, self.unreachable)

    def get_results(self, request: HttpRequest) -> None:
        # The parent counts the unfiltered rows with root_queryset.count(): make that a
        # count over every shard for the duration of the call.
        root = self.root_queryset
        self.root_queryset = cast(QuerySet, ShardedQuerySequence(root, shard_aliases(), self.unreachable))
        try:
            super().get_results(request)
        finally:
            self.root_queryset = root
        self.result_list = list(self.result_list)
        self.model_admin.annotate_results(self.result_list)


class ShardedModelAdmin(admin.ModelAdmin):
    """Admin for a sharded model: list from all shards, search by id routed, details from the right shard.

    Subclasses name the fields an exact id may match (`routed_id_fields`: the id given
    decides the shard, e.g. a wallet id or a transfer id), fields matched exactly across
    all shards (`fanout_exact_fields`), and the field holding an API client id
    (`client_field`), searched by the client's name or id across all shards.
    """

    routed_id_fields: tuple[str, ...] = ("id",)
    fanout_exact_fields: tuple[str, ...] = ()
    client_field: str | None = None
    search_fields = ("id",)  # shows the search box; get_search_results does the work
    search_help_text = "An exact id goes straight to its shard; an API client's name or id searches every shard."
    show_facets = ShowFacets.NEVER  # facet counts would be one more query per filter per shard
    show_full_result_count = True
    list_per_page = 50
    actions = None

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Deliberately not bound to a database: evaluating it without .using() raises
        # NoShardSelected (the router's safety net) instead of reading the wrong shard.
        return self.model._default_manager.get_queryset()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ShardedChangeList

    def get_sortable_by(self, request: HttpRequest) -> tuple[str, ...]:
        return ()

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}  # bulk actions would act on an unbound queryset; operator actions have their own pages

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Model | None:
        row_id = self.parse_routed_id(object_id)
        if row_id is None:
            return None
        return self.get_queryset(request).using(alias_for_id(row_id)).filter(pk=row_id).first()

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Django wraps the detail page in transaction.atomic(using=router.db_for_write(model)):
        # scope the row's shard so that is the shard it reads from.
        if object_id is None:
            raise PermissionDenied  # rows are created by services, which choose the shard
        row_id = self.parse_routed_id(object_id)
        if row_id is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]
        with use_shard(alias_for_id(row_id)):
            return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        row_id = self.parse_routed_id(object_id)
        if row_id is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]
        with use_shard(alias_for_id(row_id)):
            return super().delete_view(request, object_id, extra_context)  # refused: has_delete_permission

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @staticmethod
    def parse_routed_id(raw: str) -> uuid.UUID | None:
        """The id if `raw` is one of ours whose bucket is in the shard map, else None."""
        try:
            row_id = parse_id(raw.strip())
            alias_for_id(row_id)
        except (InvalidId, ShardMapError):
            return None
        return row_id

    def shards_for_search(self, term: str) -> list[str]:
        row_id = self.parse_routed_id(term) if term else None
        return [alias_for_id(row_id)] if row_id is not None else shard_aliases()

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        row_id = self.parse_routed_id(term)
        if row_id is not None:
            return queryset.filter(self._any_of(self.routed_id_fields, row_id)), False
        condition = self._any_of(self.fanout_exact_fields, term)
        if self.client_field:
            client_ids = api_client_ids_matching(term)
            if client_ids:
                condition |= Q(**{f"{self.client_field}__in": client_ids})
        return queryset.filter(condition), False

    @staticmethod
    def _any_of(fields: Sequence[str], value: Any) -> Q:
        condition = Q(pk__in=[])  # matches nothing when no field applies
        for field in fields:
            condition |= Q(**{field: value})
        return condition

    def annotate_results(self, results: list[Any]) -> None:
        """Attach `client_name` to each row in one query on `default` (clients do not live on the shards)."""
        if not self.client_field:
            return
        names = api_client_names({getattr(row, self.client_field) for row in results})
        for row in results:
            row.client_name = names.get(getattr(row, self.client_field), "")

    @admin.display(description="shard")
    def shard(self, obj: Model) -> str:
        return alias_for_id(obj.pk)

    @admin.display(description="API client")
    def client(self, obj: Model) -> str:
        client_id = cast(int, getattr(obj, self.client_field or "", None))
        name = getattr(obj, "client_name", None)
        if name is None:  # a detail page: one row, one lookup
            name = api_client_names({client_id}).get(client_id, "")
        return f"{name} (#{client_id})" if name else f"#{client_id}"
