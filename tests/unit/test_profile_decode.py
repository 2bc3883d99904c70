"""The decode profile's sorting of py-spy's samples: the busiest thread, first match from the
innermost frame out, and waits counted as waits."""

from __future__ import annotations

import pytest

from bench import profile_decode as pd
from bench.common import BenchError

LINEAR = pd.BUCKETS[1].name
ATTENTION = pd.BUCKETS[2].name

RAW = "\n".join([
    # The model thread: a GEMM under attention's projection is the GEMM.
    "thread (0x1);run_engine_core (core.py:900);forward (qwen2.py:250);"
    "forward (attention.py:40);dnnl::impl::cpu::x64::brgemm_kernel 70",
    "thread (0x1);run_engine_core (core.py:900);forward (qwen2.py:250);"
    "forward (attention.py:40);cpu_attention_with_kv_cache 20",
    "thread (0x1);run_engine_core (core.py:900);some_helper (misc.py:1) 5",
    "thread (0x1);worker_busy_loop (gpu_worker.py:1);acquire_read (shm_broadcast.py:9) 5",
    # A socket thread, fewer samples: not the step.
    "thread (0x2);process_output_sockets (core.py:1200);send (zmq.py:1) 40",
    "garbage line",
])


def test_the_busiest_thread_is_sorted_innermost_frame_first() -> None:
    buckets, leaves, total = pd.parse(RAW)
    assert total == 100
    assert buckets[LINEAR] == 70 and buckets[ATTENTION] == 20
    assert buckets[pd.WAITING] == 5
    # core.py is the engine loop: the first frame out from some_helper that matches.
    assert buckets["engine loop: scheduler, queues, ZeroMQ"] == 5
    assert sum(buckets.values()) == total
    assert leaves["dnnl::impl::cpu::x64::brgemm_kernel"] == 70


def test_no_samples_is_an_error_not_an_empty_table() -> None:
    with pytest.raises(BenchError, match="no samples"):
        pd.parse("nothing here\n")


def test_the_forms_are_the_engines_bench_variants() -> None:
    assert "bf16" in pd.FORMS and pd.FORMS[pd.PROFILED].profile
    assert all(v.engine == "ours" for v in pd.FORMS.values())
