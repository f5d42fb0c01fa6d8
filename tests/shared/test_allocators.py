"""A worker gives back what a task freed, pyarrow's allocator by the GiveBackMemory middleware after each
message. (Polars' allocator, set in ``dx/workers/__init__.py``, kept memory only under the workers' real load:
no small allocation pattern here reproduced it; the bench's memory scenario measures it.)"""

from __future__ import annotations

import subprocess
import sys

#: Allocates and frees about 1 GB through pyarrow and Polars, twice, each time as a message whose
#: processing ends, then idles; prints its resident MB at start, at the top and after idling.
SCRIPT = """
import time
import dx.workers
import numpy as np, polars as pl, pyarrow as pa
from dx.workers.middleware import GiveBackMemory

def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024

base = rss()
for _ in range(2):
    arrow = pa.array(np.arange(15_000_000)).cast(pa.string())
    polars = [pl.Series(np.arange(100_000)).cast(pl.String) for _ in range(150)]  # in pieces, as chunks do
    top = rss()
    del arrow, polars
    GiveBackMemory().after_process_message(None, None)
time.sleep(2.5)
print(base, top, rss())
"""


def test_an_idle_worker_gives_back_what_its_tasks_freed():
    # Given a dx process that allocated and freed about 1 GB through pyarrow and Polars in its messages
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    base, top, idle = map(int, out.stdout.split())
    # When it idles / Then its resident memory is back near where it started (both allocators kept
    # 550+ MB of it without the settings)
    assert top - base > 400
    assert idle - base < 100, (base, top, idle)
