"""ISO 4217 currency codes accepted for wallets (active codes; funds and precious metals excluded)."""

_CODES = """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
    BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD
    RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP
    TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW
    ZWG
"""
ISO_4217_CODES = frozenset(_CODES.split())


def is_supported_currency(code: str) -> bool:
    return code in ISO_4217_CODES


# ISO 4217 minor units (digits after the decimal point) of the codes above that do not have 2.
_NO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_MINOR_UNITS = {**dict.fromkeys(_NO_DECIMALS.split(), 0), **dict.fromkeys(_THREE_DECIMALS.split(), 3)}


def minor_units(code: str) -> int:
    """Digits after the decimal point in an amount of `code`: 0 for JPY, 3 for KWD, else 2."""
    return _MINOR_UNITS.get(code, 2)


def format_minor(amount_minor: int, code: str) -> str:
    """An amount in minor units as people read it: 2500 USD -> "25.00 USD", 2500 JPY -> "2,500 JPY".

    Integer arithmetic only: no float ever rounds a balance on its way to the screen.
    """
    digits = minor_units(code)
    whole, fraction = divmod(abs(amount_minor), 10**digits)
    text = f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")
    return f"{'-' if amount_minor < 0 else ''}{text} {code}"
