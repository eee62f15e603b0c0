from lumiku_common.settings import ServiceSettings


class UsageSettings(ServiceSettings):
    service_name: str = "usage"
    database_name: str = "lumiku_usage"

    # Whole months of history kept besides the current one; None keeps everything. Retention drops a month's
    # partition (instant, no vacuum debt) instead of deleting rows.
    usage_retention_months: int | None = None
    usage_partitions_ahead: int = 2  # months created in advance, so inserts never wait for DDL
    usage_partition_interval_seconds: float = 3600.0
    usage_batch_size: int = 500  # avatar.used events per transaction (prefetch twice that)
    # Each batch stages one usage.recorded per use: the relay takes them in bulk (one transaction, confirms
    # pipelined) rather than the suite's default 100 at a time.
    outbox_batch_size: int = 500
    # An avatar.used whose owner the projection does not know, while avatars cannot be asked: retried with
    # backoff up to this delay between attempts, never dead-lettered for it.
    usage_max_defer_seconds: float = 30.0
    owner_lookup_timeout_seconds: float = 3.0
