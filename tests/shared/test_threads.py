"""dx's threads carry their names to the operating system (/proc/<pid>/task/<tid>/comm)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dx.shared import threads


def _os_name_of(name: str) -> str:
    """The OS name a dx thread of Python name ``name`` has while it runs."""
    seen: list[str] = []
    thread = threads.Thread(lambda: seen.append(threads.native_name()), name)
    thread.start()
    thread.join()
    return seen[0]


def test_a_dx_thread_takes_its_name_for_the_operating_system() -> None:
    assert _os_name_of("dx-fetch") == "dx-fetch"


def test_a_long_name_keeps_its_first_15_bytes_as_the_kernel_does() -> None:
    assert _os_name_of("dx-a-very-long-name") == "dx-a-very-long-"


def test_a_pool_thread_named_by_its_initializer_has_its_prefix_and_number() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="dx-repeats", initializer=threads.name_native) as pool:
        assert pool.submit(threads.native_name).result() == "dx-repeats_0"


def test_a_plain_python_thread_keeps_the_process_s_name() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="other") as pool:
        assert not pool.submit(threads.native_name).result().startswith("other")
