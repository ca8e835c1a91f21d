from prometheus_client import Counter, Histogram

SMTP_CONNECTIONS = Counter("a3_smtp_connections_total", "SMTP connections, by outcome.", ["outcome"])
SMTP_REPLIES = Counter("a3_smtp_replies_total", "SMTP replies sent, by code.", ["code"])
SMTP_MESSAGES = Counter("a3_smtp_messages_total", "Messages at DATA, by outcome.", ["outcome"])
ACCEPT_BATCH_SIZE = Histogram(
    "a3_smtp_accept_batch_size",
    "Messages made durable per group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ACCEPT_SECONDS = Histogram(
    "a3_smtp_accept_seconds",
    "Time from end of DATA to durable (blob fsynced, rows committed).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RELAY_ATTEMPTS = Counter(
    "a3_relay_attempts_total", "Outbound delivery attempts per queue item, by outcome.", ["outcome"]
)
RELAY_RECIPIENTS = Counter(
    "a3_relay_recipients_total", "Outbound recipient outcomes per attempt, by state.", ["state"]
)
