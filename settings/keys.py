"""Names of casesync's own Redis keys, shared by intake, tasks and the operator commands.

Streams and the consumer group are settings (contract §1); the keys below are casesync's private
state. They all start with ``casesync:`` so an operator can find (and never collide with) them.
"""

from __future__ import annotations

PREFIX = "casesync"

#: ``(source, id)`` of an event already applied or superseded -> its outcome type. TTL: ledger_ttl.
LEDGER = f"{PREFIX}:ledger"
#: One update in flight per case: holds the owner's token; expires if the owner dies.
CASE_LOCK = f"{PREFIX}:lock:case"
#: Newest change applied to a case, as an order key (core.guards.order_key); lives as the ledger.
CASE_NEWEST = f"{PREFIX}:newest:case"
#: Every stream entry handed on and not finished: entry id -> its job (event JSON, retry state).
JOBS = f"{PREFIX}:jobs"
#: Entries a task works on, scored by when the lease runs out (epoch ms); renewed while it runs.
LEASES = f"{PREFIX}:leases"
#: Entries waiting for a retry, a busy case or the breaker, scored by when they are due (epoch ms).
DUE = f"{PREFIX}:due"
#: Entry id -> how many times its lease ran out (its worker died or froze): a poison event's count.
LOST = f"{PREFIX}:lost"
#: Written by the one-event-per-task design (before batches) once an entry's outcome was; read
#: only so that a task of that design still queued at an upgrade is not applied twice.
LEGACY_ENTRY_DONE = f"{PREFIX}:entry-done"
#: Set when a task takes an event's case, deleted once its outcome is known: present when a task
#: takes it again means an earlier attempt's result is unknown (worker killed, answer lost), so
#: the case is read first. Holds when (epoch ms) the oldest such attempt began.
ATTEMPT_MARK = f"{PREFIX}:attempt"


#: What casesync did with each event of a case, newest first (``core.trace`` records as JSON):
#: capped at ``CASESYNC_TRACE_LENGTH``, expiring ``CASESYNC_TRACE_TTL`` after the last record.
TRACE_CASE = f"{PREFIX}:trace:case"
#: An event's ``(source, id)`` -> its case id, for ``casesync trace --event``; written when the
#: event arrives, it expires ``CASESYNC_TRACE_TTL`` later.
TRACE_EVENT = f"{PREFIX}:trace:event"


def event_key(prefix: str, source: str, event_id: str) -> str:
    """A per-event key; ``source`` and ``id`` are length-prefixed so no two pairs can collide."""
    return f"{prefix}:{len(source)}:{source}:{event_id}"


def case_key(prefix: str, case_id: int) -> str:
    return f"{prefix}:{case_id}"


#: The shared schedule of the request-rate cap (the next free call slot, in ms).
RATE_SCHEDULE = f"{PREFIX}:rate:schedule"
#: Until when (epoch ms) every worker holds its calls, after a ``Retry-After`` from Thalamus.
PAUSE_UNTIL = f"{PREFIX}:rate:pause-until"
#: Present while the circuit breaker is open; holds the reason.
BREAKER_OPEN = f"{PREFIX}:breaker:open"
#: Held by the one worker probing Thalamus while the breaker is open.
BREAKER_PROBE = f"{PREFIX}:breaker:probe"
#: The Thalamus session cookie shared by all workers, and the lock of the one login renewing it.
SESSION = f"{PREFIX}:session"
SESSION_LOGIN = f"{PREFIX}:session:login"
