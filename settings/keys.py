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
#: Newest change applied to a case, as an order key (see tasks.ordering); lives as the ledger.
CASE_NEWEST = f"{PREFIX}:newest:case"
#: Stream entries whose outcome is written: a task redelivered after its worker died between the
#: outcome and the acknowledgement finds its entry here and ends without a second outcome.
ENTRY_DONE = f"{PREFIX}:entry-done"
#: Entries handed to an update task whose outcome is not written yet, scored by when a task last
#: showed it was alive (epoch ms). A safety net for task messages the broker loses (kombu pops a
#: message before it records it as unacknowledged): intake hands on again an entry that stays
#: silent longer than the visibility time-out.
INFLIGHT = f"{PREFIX}:inflight"
#: Set before a PUT, deleted when its outcome is known: present at the start of an attempt means
#: the previous attempt's result is unknown (worker killed, answer lost) and the case must be read.
ATTEMPT_MARK = f"{PREFIX}:attempt"


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
