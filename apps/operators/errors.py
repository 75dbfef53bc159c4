from apps.common.errors import DomainError


class ReasonRequired(DomainError):
    code = "reason_required"
    status = 400
    default_message = "Say why: every operator action needs a reason."
