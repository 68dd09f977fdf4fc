"""How times are shown: float seconds from the start of the file -> H:MM:SS(.s)."""


def format_time(seconds: float, decimals: int = 1) -> str:
    """1.25 -> '0:00:01.2'; 3725 -> '1:02:05.0'. Negative input is clamped to 0."""
    seconds = max(0.0, float(seconds))
    scale = 10**decimals
    total = int(round(seconds * scale))
    whole, frac = divmod(total, scale)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}"
    return f"{text}.{frac:0{decimals}d}" if decimals else text
