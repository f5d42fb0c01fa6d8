"""The allocators' settings made in ``dx/__init__.py``: a dx process gives back what a task freed."""

from __future__ import annotations

import subprocess
import sys

#: Allocates and frees about 1 GB through pyarrow and Polars, twice, then idles; prints its
#: resident MB at start, at the top and after idling.
SCRIPT = """
import time
import dx
import numpy as np, polars as pl, pyarrow as pa

def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024

base = rss()
for _ in range(2):
    strings = pa.array(np.arange(20_000_000)).cast(pa.string())
    frame = pl.from_arrow(strings).to_frame("s").with_columns(pl.col("s").str.len_bytes().alias("n"))
    top = rss()
    del strings, frame
time.sleep(2.5)
print(base, top, rss())
"""


def test_an_idle_dx_process_gives_back_what_its_libraries_freed():
    # Given a dx process that allocated and freed about 1 GB through pyarrow and Polars
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    base, top, idle = map(int, out.stdout.split())
    # When it idles / Then its resident memory is back near where it started (both allocators kept
    # 550+ MB of it without the settings)
    assert top - base > 400
    assert idle - base < 100, (base, top, idle)
