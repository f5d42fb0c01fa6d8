"""DataExchange workers: the Dramatiq actors and the data plane they run.

Polars' allocator (jemalloc) keeps what a task freed until it is next called: an idle worker held
it, and the next task's peak came on top of it. Unless the environment says otherwise, jemalloc
returns freed memory from a background thread after a second. It reads this when it loads: it is
set here, before any worker module imports Polars. (pyarrow's allocator is purged after each message, see
``dx.workers.middleware.GiveBackMemory``.)
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0")
