from prometheus_client import Counter, Histogram

MESSAGES_SCANNED = Counter("a3_scan_messages_total", "Messages scanned, by how they were sent.", ["source"])
VERDICTS = Counter("a3_scan_verdicts_total", "Actions taken per recipient mailbox, by action.", ["action"])
QUARANTINED = Counter("a3_quarantine_messages_total", "Messages quarantined, by category.", ["category"])
SCAN_STAGE_SECONDS = Histogram(
    "a3_scan_stage_seconds",
    "Time spent in each scan stage.",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
SCAN_SECONDS = Histogram(
    "a3_scan_seconds",
    "Time to scan one message, all stages.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
