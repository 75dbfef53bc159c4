from apps.common.errors import DomainError


class WalletNotFound(DomainError):
    code = "wallet_not_found"
    status = 404
    default_message = "No such wallet."


class WalletFrozen(DomainError):
    code = "wallet_frozen"
    status = 409
    default_message = "The wallet is frozen: it can neither pay nor receive."


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    status = 422
    default_message = "The wallet's balance is lower than the amount."


class BalanceLimitExceeded(DomainError):
    code = "balance_limit_exceeded"
    status = 422
    default_message = "The wallet's balance would exceed the largest amount it can hold (2^63-1 minor units)."


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"
    status = 422
    default_message = "The wallet holds another currency."
