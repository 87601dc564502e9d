"""The ONNX Runtime backend moves a fresh session's memory onto transparent huge pages (backends/hugepages.py)."""

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from llamaport.runtime.backends import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    text = THP.read_text() if THP.exists() else "[never]"
    return text[text.index("[") + 1 : text.index("]")]


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def _written_region(size: int) -> tuple[mmap.mmap, int]:
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    array = np.frombuffer(region, np.uint8)
    array[:] = 1  # resident, as prepacked weights are
    address = array.ctypes.data
    del array
    return region, address


def test_only_the_parts_of_ranges_not_mapped_before_count_as_new():
    before = [(100, 200), (300, 400)]
    assert hugepages._subtract([(0, 500)], before) == [(0, 100), (200, 300), (400, 500)]
    assert hugepages._subtract([(150, 350), (600, 700)], before) == [(200, 300), (600, 700)]
    assert hugepages._subtract([(100, 200)], before) == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or _thp_mode() not in ("madvise", "always"),
                    reason="transparent huge pages are Linux-only and need THP set to madvise or always")
def test_memory_mapped_after_the_snapshot_is_collapsed_and_older_memory_is_left_alone():
    size = 8 * hugepages.HUGE_PAGE
    old, old_address = _written_region(size)
    before = hugepages.anonymous_ranges()
    new, new_address = _written_region(size)
    try:
        collapsed = hugepages.collapse_new(before)
        if collapsed == 0:
            pytest.skip("this kernel has no MADV_COLLAPSE (Linux 6.1+) or no free huge pages")
        assert collapsed >= size - hugepages.HUGE_PAGE  # all but the unaligned ends
        assert _anon_huge_kb(new_address) >= (size - 2 * hugepages.HUGE_PAGE) // 1024
        if _thp_mode() == "madvise":  # under "always" the kernel may have made it huge on its own
            assert _anon_huge_kb(old_address) == 0
    finally:
        new.close()
        old.close()


def test_collapse_is_a_no_op_without_a_snapshot():
    assert hugepages.collapse_new([]) == 0


def test_collapse_is_off_when_the_environment_says_so(monkeypatch):
    region, _ = _written_region(4 * hugepages.HUGE_PAGE)
    try:
        monkeypatch.setenv(hugepages.SWITCH, "0")
        assert hugepages.collapse_new([(0, 1)]) == 0
    finally:
        region.close()


def _resident_fraction(address: int, nbytes: int) -> float:
    """Share of the 4 KiB pages of [address, address + nbytes) that are resident (/proc/self/pagemap's present bit)."""
    page = mmap.PAGESIZE
    first, last = address // page, (address + nbytes - 1) // page
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = np.frombuffer(pagemap.read((last - first + 1) * 8), np.uint64)
    return float(np.mean(entries >> np.uint64(63)))


linux_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or _thp_mode() not in ("madvise", "always"),
                               reason="transparent huge pages are Linux-only and need THP set to madvise or always")


@linux_thp
def test_small_page_zeros_hold_only_the_pages_written():
    cache = hugepages.small_page_zeros((1, 4, 4096, 128), np.float32)  # 8 MiB, as np.zeros would advise huge
    assert cache[0, 0, 0, 0] == 0 and cache[-1, -1, -1, -1] == 0
    cache[0, :, 0, :] = 1.0  # the first position of each head, as a prefill of one token writes it
    assert _anon_huge_kb(cache.ctypes.data + cache.nbytes // 2) == 0
    assert _resident_fraction(cache.ctypes.data, cache.nbytes) < 0.01  # 4 pages of 2048, not 4 blocks of 2 MiB


@linux_thp
def test_low_memory_sessions_keep_untouched_cache_positions_out_of_memory(tmp_path):
    """Export verification's session: a 13B-shaped cache at max_seq 2048 (1.68 GB) was all resident after one
    prefill on huge pages. Here a tiny MHA engine with 16 MiB caches, verified by a prefill and a decode step."""
    from tiny import save_hf_model

    from llamaport.enginedir import BackendName, open_engine_dir
    from llamaport.exporter import ExportOptions, export_engine
    from llamaport.runtime.backends import open_backend

    save_hf_model(tmp_path / "ckpt", "mha", max_position_embeddings=65536)
    export_engine(tmp_path / "ckpt", tmp_path / "engine", ExportOptions(target="ort", max_seq=65536, verify=False,
                                                                        quiet=True))
    manifest = open_engine_dir(tmp_path / "engine")
    backend = open_backend(tmp_path / "engine", manifest, BackendName.ONNXRUNTIME, low_memory=True)
    backend.reset(1)
    backend.forward(np.array([[3, 4, 5]]), np.array([0]), np.array([3]))
    backend.forward(np.array([[6]]), np.array([3]), np.array([1]))
    shape = (1, *backend.cache_shape)  # (B, H_kv, S_max, D)
    nbytes = int(np.prod(shape)) * np.dtype(backend.cache_dtype).itemsize
    assert shape[2] == 65536 and nbytes >= 16 << 20
    assert max(_resident_fraction(v.data_ptr(), nbytes) for v in backend.caches.values()) < 0.01
