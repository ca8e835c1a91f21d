"""`manage.py bench_smtp`: SMTP throughput of A3Mailer against Postfix, receiving
(inbound) and relaying (outbound).

loadgen   our asyncio SMTP load generator (many messages per session, timed acks)
probes    what is measured beside the load: peak RSS of a process tree, delivered counts
targets   the servers under test: A3Mailer (embedded, scale-out) and the Postfix anchor
postfix   a private Postfix instance in a directory of its own (relay or destination)
sink      the remote MTA of the outbound run: accepts, logs arrival times, discards
outbound  the outbound scenario: submission → relay → sink, A3Mailer against Postfix
report    the Markdown tables and the JSON file
runner    the scenario: which server, which generator, in which order, and clean-up

Figures are printed, never asserted: absolute rates drift on shared machines, so the
ratio to Postfix measured in the same run is what counts (see shared/bench/README.md).
"""
