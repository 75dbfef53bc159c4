"""The operations page in the admin: stalled and parked transfers, the shard map, CDC lag."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from apps.observability.cdc import cdc_lag
from apps.operators.selectors import shard_overview, stuck_transfer_list
from apps.sharding.admin import money_html
from apps.sharding.fence_alarm import stranded_fences
from apps.sharding.moves import move_overview
from apps.sharding.routing import shard_map


def _older_than(request: HttpRequest) -> int:
    raw = request.GET.get("older_than", "")
    if raw.isdigit():
        return int(raw)
    return int(settings.SAGA_STALLED_AFTER_SECONDS)


def operations(request: HttpRequest) -> HttpResponse:
    """Transfers needing attention (parked, or in flight and untouched for N seconds) with
    the actions an operator may take, and the state of each shard."""
    if not request.user.has_perm("transfers.view_transfer"):
        raise PermissionDenied
    seconds = _older_than(request)
    stuck = stuck_transfer_list(older_than=timedelta(seconds=seconds))
    can_redrive = request.user.has_perm("operators.redrive_transfer")
    can_compensate = request.user.has_perm("operators.compensate_transfer")
    back_here = urlencode({"next": request.get_full_path()})
    rows = [
        {
            "row": row,
            "url": reverse("admin:transfers_transfer_change", args=[row.transfer.id]),
            "amount": money_html(row.transfer.amount_minor, row.transfer.currency),
            "redrive_url": f"{reverse('admin:transfers_transfer_redrive', args=[row.transfer.id])}?{back_here}"
            if can_redrive
            else "",
            "compensate_url": f"{reverse('admin:transfers_transfer_compensate', args=[row.transfer.id])}?{back_here}"
            if can_compensate
            else "",
        }
        for row in stuck.rows
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "older_than": seconds,
        "rows": rows,
        "unreachable": stuck.unreachable,
        "shards": shard_overview(),
        "map_epoch": shard_map().epoch,
        "moves": move_overview(),
        "stranded_fences": stranded_fences()[0],
        "cdc_lag": cdc_lag(),
    }
    return TemplateResponse(request, "admin/operators/operations.html", context)
