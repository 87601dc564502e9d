"""Move the memory a session just allocated (its prepacked weights) onto 2 MiB transparent huge pages (Linux).

Why: a CPU decode step streams every weight once, so on 4 KiB pages it misses the TLB on nearly every page
(~140k pages per step for a 1.1B int4 engine). ONNX Runtime's prepacked MatMulNBits buffers come from plain
malloc/mmap, so with THP in `madvise` mode (this machine's, and a common default) they stay on 4 KiB pages, and
decode speed then also depends on where the kernel placed them: with two sessions in one process, whichever was
loaded second decoded 8-11% faster, whatever its graph. That, not the graph, was the gap to onnxruntime-genai
(its own graph run through this backend matched it; on huge pages both graphs decode alike, 49 tok/s).
Measured, 1.1B-shape int4 engine, 2 cores, decode tok/s, medians:
  - one process, interleaved with genai: 39.4 -> 47.6 (genai 43.9);
  - alternating fresh processes: 41.5 -> 44.8 (genai 39.3); SmolLM2: 127.7 -> 147.6.
MADV_COLLAPSE (Linux 6.1+) copies the pages synchronously, once at load, as kernel CPU time: 0.13-0.15 s for the
1.1B's 540 MB when free huge pages were in use moments before, up to 1.5 s in this VM when they come cold from the
host (likely its free-page reporting); 0.1 s for SmolLM2 int4. SmolLM2 fp32 `ort` (alternating fresh processes):
decode 47.6 -> 51.5 tok/s, load 0.84 -> 2.11 s on this VM. So a one-shot generation of a few dozen tokens there
loses more at load than it gains: LLAMAPORT_HUGE_PAGES=0 turns it off. Without /proc or MADV_COLLAPSE: a no-op.

The other way round, `small_page_zeros`: memory that is allocated large but written sparsely (export
verification's KV caches) is kept off huge pages, so that it costs only the pages written.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys

import numpy as np

MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # <linux/mman.h>
HUGE_PAGE = 2 << 20
Range = tuple[int, int]  # [start, end) virtual addresses
SWITCH = "LLAMAPORT_HUGE_PAGES"  # "0": sessions keep the pages they got


def small_page_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros in an anonymous mapping of their own, kept on 4 KiB pages: only the pages written become resident.

    np.zeros would not do for a KV cache (B, H_kv, S_max, D) that a few steps write a few positions of per head:
    NumPy advises MADV_HUGEPAGE on allocations of 4 MiB or more, so one write per 2 MiB block makes all of it
    resident (1.5 of a 13B-shaped cache's 1.68 GB after a 5-token prefill, export verification), and once glibc
    has raised its mmap threshold the array may come from heap memory that is already resident. A fresh mapping
    is zero-filled by the kernel page by page, as it is touched.
    """
    count = int(np.prod(shape))
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}  # not Windows
    region = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), **private)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; under THP "always" the kernel would otherwise fault 2 MiB
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype, count=count).reshape(shape)  # the array keeps `region` alive


def anonymous_ranges() -> list[Range]:
    """Writable anonymous mappings of this process (heap included); [] where /proc is not there."""
    if not sys.platform.startswith("linux"):
        return []
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                anonymous = len(fields) == 5 or (len(fields) == 6 and fields[5] == "[heap]")
                if anonymous and fields[1].startswith("rw"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def _subtract(ranges: list[Range], old: list[Range]) -> list[Range]:
    """The parts of `ranges` that no range of `old` covers (what appeared since `old` was read)."""
    old = sorted(old)
    out = []
    for start, end in ranges:
        for o_start, o_end in old:
            if o_end <= start or o_start >= end:
                continue
            if o_start > start:
                out.append((start, o_start))
            start = max(start, o_end)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out


def collapse_new(before: list[Range]) -> int:
    """Collapse onto huge pages the anonymous memory mapped since `before` (from anonymous_ranges()); returns
    the bytes collapsed. Only whole 2 MiB-aligned blocks inside new mappings are touched, so memory this
    process held before is left as it was. Collapsing fills a block's unwritten pages too; the new mappings are
    written weights, and resident size measured the same before and after (1.1B shape: 664 MB both)."""
    if not before or os.environ.get(SWITCH) == "0":
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, end in _subtract(anonymous_ranges(), before):
        start, end = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if end <= start:
            continue
        # MADV_HUGEPAGE first, so khugepaged keeps the range huge and the arena's later faults there are huge.
        if libc.madvise(start, end - start, MADV_HUGEPAGE) != 0 or libc.madvise(start, end - start, MADV_COLLAPSE) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # kernel before 6.1, or THP set to never: nothing to gain
                return done
            continue  # EAGAIN/ENOMEM: no free huge page now; the rest may still fit
        done += end - start
    return done
