"""Dashboard pages of the relay: the queue, DKIM keys, transport rules."""
