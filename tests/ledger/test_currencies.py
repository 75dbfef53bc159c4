"""Minor units to what people read, per ISO 4217 exponent, exactly."""

import pytest

from apps.ledger.currencies import ISO_4217_CODES, format_minor, minor_units


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (2_500, "USD", "25.00 USD"),
        (2_500, "JPY", "2,500 JPY"),
        (2_500, "KWD", "2.500 KWD"),
        (5, "USD", "0.05 USD"),
        (5, "BHD", "0.005 BHD"),
        (0, "EUR", "0.00 EUR"),
        (-1_234, "USD", "-12.34 USD"),
        (-1, "KWD", "-0.001 KWD"),
        (123_456_789, "EUR", "1,234,567.89 EUR"),
        (2**63 - 1, "USD", "92,233,720,368,547,758.07 USD"),  # a float would show ...758.08
    ],
)
def test_an_amount_shows_in_its_currencys_decimals_exactly(amount, currency, shown) -> None:
    assert format_minor(amount, currency) == shown


def test_every_supported_currency_has_0_2_or_3_decimals() -> None:
    exponents = {code: minor_units(code) for code in ISO_4217_CODES}
    assert set(exponents.values()) == {0, 2, 3}
    assert {c for c, e in exponents.items() if e == 0} >= {"JPY", "KRW", "VND", "CLP", "ISK", "XOF"}
    assert {c for c, e in exponents.items() if e == 3} == {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
