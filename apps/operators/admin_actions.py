"""Operator actions on admin detail pages: a button, a form asking why, a service call.

Each action has its own page (`<object id>/<action>/`): GET shows what will happen and asks
for a reason, POST runs the operator service (which writes the audit record). Both need
the action's permission: anyone else gets 403 before anything is read or written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme

from apps.operators.models import ActionOutcome, OperatorAction


@dataclass(frozen=True)
class OperatorActionSpec:
    name: str  # URL segment
    label: str
    permission: str  # "app_label.codename"
    run: Callable[..., OperatorAction]  # (actor=, <target>=, reason=) -> the audit record
    target_kwarg: str  # the service's keyword for the target id, e.g. "wallet_id"
    applies: Callable[[Any], bool]  # shown for this object?
    explanation: str  # what will happen, shown above the reason field


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Required. Kept in the audit trail with your name and the time.",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why.")
        return reason


_MESSAGE_LEVELS: dict[str, int] = {
    ActionOutcome.SUCCEEDED: messages.SUCCESS,
    ActionOutcome.REFUSED: messages.WARNING,
    ActionOutcome.FAILED: messages.ERROR,
}


class OperatorActionsMixin:
    """For a ModelAdmin (a ShardedModelAdmin): `operator_actions` become pages and detail-page buttons."""

    operator_actions: tuple[OperatorActionSpec, ...] = ()
    change_form_template: Any = "admin/operators/change_form.html"

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        urls = [
            path(
                f"<path:object_id>/{spec.name}/",
                self.admin_site.admin_view(partial(self.operator_action_view, spec=spec)),  # type: ignore[attr-defined]
                name=f"{opts.app_label}_{opts.model_name}_{spec.name}",
            )
            for spec in self.operator_actions
        ]
        return urls + super().get_urls()  # type: ignore[misc]

    def available_operator_actions(self, request: HttpRequest, obj: Model) -> list[dict[str, str]]:
        opts = self.model._meta  # type: ignore[attr-defined]
        prefix = f"admin:{opts.app_label}_{opts.model_name}"
        return [
            {"label": spec.label, "url": reverse(f"{prefix}_{spec.name}", args=[obj.pk])}
            for spec in self.operator_actions
            if request.user.has_perm(spec.permission) and spec.applies(obj)
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
        extra_context = {**(extra_context or {})}
        if obj is not None:
            extra_context["operator_actions"] = self.available_operator_actions(request, obj)
        return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]

    def operator_action_view(self, request: HttpRequest, object_id: str, spec: OperatorActionSpec) -> HttpResponse:
        if not request.user.has_perm(spec.permission):
            raise PermissionDenied  # 403, before anything is read or changed
        obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
        opts = self.model._meta  # type: ignore[attr-defined]
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, opts, object_id)  # type: ignore[attr-defined]
        back = self._next_url(request) or reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            record = spec.run(
                actor=request.user, reason=form.cleaned_data["reason"], **{spec.target_kwarg: uuid.UUID(str(obj.pk))}
            )
            level = _MESSAGE_LEVELS.get(record.outcome, messages.INFO)
            messages.add_message(request, level, f"{spec.label}: {record.detail}")
            return HttpResponseRedirect(back)
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"{spec.label}: {obj}",
            "opts": opts,
            "object": obj,
            "spec": spec,
            "form": form,
            "back": back,
            "next": self._next_url(request) or "",
        }
        return TemplateResponse(request, "admin/operators/action_form.html", context)

    @staticmethod
    def _next_url(request: HttpRequest) -> str | None:
        candidate = request.POST.get("next") or request.GET.get("next")
        if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}):
            return candidate
        return None
