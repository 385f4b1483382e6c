"""casesync's benchmark: the pipeline measured side by side with the limits it is held to.

``make bench`` (``casesync bench``) runs, in one invocation against the simulator and an
embedded Redis: a bare httpx loop, a plain stream consumer and the casesync pipeline, at each
API latency, and prints a table, the targets and a JSON file. See ``bench/README.md``.
"""
