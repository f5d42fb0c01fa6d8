"""DataExchange: contact data between clients and the platform's contact databases.

Polars' allocator (jemalloc) and pyarrow's (mimalloc) keep what a task freed until they are next
called: an idle worker held 400 MB after a 1M-row import, and the next task's peak came on top of
it. Unless the environment says otherwise, jemalloc returns freed memory from a background thread
after a second and mimalloc at once. Both read these when they load: they are set here, before
anything imports them.
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0")
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
