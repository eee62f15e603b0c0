from lumiku_common.settings import ServiceSettings


class CreditsSettings(ServiceSettings):
    service_name: str = "credits"
    database_name: str = "lumiku_credits"
    credits_signup_bonus: int = 100
    # `lowBalance` and the credits.balance_low event fire when available credits drop below this.
    credits_low_balance_threshold: int = 50
    credits_hold_ttl_seconds: int = 900
    credits_max_hold_ttl_seconds: int = 86_400
    credits_sweep_seconds: float = 5.0
