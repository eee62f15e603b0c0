"""`make system-test` (`python -m lumiku_devtools.system`): the whole suite as real processes under a load mix
while a chaos schedule kills processes, cuts PostgreSQL and RabbitMQ links and makes the AI provider fail; then,
once the system has settled, invariants checked from the databases, the broker and the object store.

timeline.py  what the harness saw (responses) and what chaos did (fault windows); the 5xx classifier
load.py      the load mix through the gateway, and avatar.used straight to RabbitMQ
chaos.py     the fault schedule
snapshot.py  reads the databases, queues and storage once the system settled
invariants.py the checks, pure functions over a snapshot
run.py       starts everything, runs load and chaos, drains, checks, reports
"""
