"""minqwen3/timeline.py: per-step kernel figures from (name, start, end) triples, against sums done by hand; and the
profiler's record on a GPU, against CUDA events timing the same kernels."""
import pytest
import torch

from minqwen3 import timeline

# two steps of three kernels; the all-reduce overlaps its neighbour by 1 µs in step 2
KERNELS = [("triton_red_fused_mm_0", 0.0, 10.0), ("one_shot_all_reduce_kernel", 12.0, 19.0),
           ("triton_poi_fused_add_1", 20.0, 22.0),
           ("triton_red_fused_mm_0", 25.0, 35.0), ("one_shot_all_reduce_kernel", 36.0, 44.0),
           ("triton_poi_fused_add_1", 43.0, 46.0)]


def test_summarize_per_step():
    s = timeline.summarize(KERNELS, steps=2)
    assert s["kernels_per_step"] == 3
    assert s["busy_us"] == pytest.approx((10 + 7 + 2 + 10 + 8 + 3) / 2)
    # idle: 2 + 1 (step 1), 3 (between the steps), 1 (step 2); the overlap is not idle and is busy once in the union
    assert s["idle_us"] == pytest.approx((2 + 1 + 3 + 1) / 2)
    assert s["span_us"] == pytest.approx(46 / 2)
    assert s["busy_union_us"] == pytest.approx((46 - 7) / 2)
    by_name = {k: (c, t, g) for k, c, t, g in s["by_name"]}
    assert by_name["one_shot_all_reduce_kernel"] == pytest.approx((1, 7.5, 1.5))
    assert by_name["triton_poi_fused_add_1"] == pytest.approx((1, 2.5, 0.5))
    assert s["by_name"][0][0] == "triton_red_fused_mm_0"  # longest first
    kinds = {k: (c, t, g) for k, c, t, g in s["by_kind"]}
    assert set(kinds) == {"triton reduction", "all-reduce", "triton pointwise"}
    assert kinds["triton reduction"] == pytest.approx((1, 10, 1.5))  # the 3 µs between the steps is idle before it
    # the middle step (of 2: the second), in order, with the idle time before each kernel
    assert [(n, round(d, 6), g) for n, d, g in s["step"]] == [
        ("triton_red_fused_mm_0", 10.0, 3.0), ("one_shot_all_reduce_kernel", 8.0, 1.0),
        ("triton_poi_fused_add_1", 3.0, 0.0)]


def test_summarize_edges():
    with pytest.raises(ValueError, match="steps = 0"):
        timeline.summarize(KERNELS, 0)
    assert timeline.summarize([], 3)["kernels_per_step"] == 0
    assert timeline.summarize(KERNELS[:5], 2)["step"] is None  # uneven: no step to show
    assert timeline.kind("ncclDevKernel_AllGather_RING_LL") == "all-gather"
    assert timeline.kind("_flash_decode_kernel") == "attention"
    assert timeline.kind("something_else") == "other"
    assert timeline.kind("triton_red_fused__unsafe_view_all_reduce_mm_t_transpose_view_5") == "triton reduction"
    assert timeline.kind("_all_reduce") == "all-reduce"
    text = "\n".join(timeline.lines(timeline.summarize(KERNELS, 2), top=1))
    assert "3.0 kernels" in text and "triton_red_fused_mm_0" in text and "triton_poi_fused_add_1" not in text


def test_after_first_step_drops_the_step_that_waited():
    # a rank that started recording 7,000 µs early: its first all-reduce waits that long, once
    late = [("triton_red_fused_mm_0", 0.0, 10.0), ("one_shot_all_reduce_kernel", 12.0, 7019.0),
            ("triton_poi_fused_add_1", 7020.0, 7022.0)] + [(n, a + 7000, b + 7000) for n, a, b in KERNELS[3:]]
    kept = timeline.after_first_step(late + [(n, a + 7025, b + 7025) for n, a, b in KERNELS[3:]], steps=2)
    assert kept[0] == ("triton_red_fused_mm_0", 7025.0, 7035.0) and len(kept) == 6
    s = timeline.summarize(kept, 2)
    assert {k: t for k, c, t, g in s["by_name"]}["one_shot_all_reduce_kernel"] == pytest.approx(8.0)
    assert timeline.after_first_step(KERNELS[:5], 1) == KERNELS[:5]  # uneven: nothing dropped
    assert timeline.after_first_step([], 3) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_record_times_kernels_as_cuda_events_do():
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()

    def work():
        for _ in range(5):
            a.mul_(1.0001)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    work()
    start.record()
    work()
    end.record()
    torch.cuda.synchronize()
    ks = timeline.record(work)
    s = timeline.summarize(ks, steps=5)
    assert s["kernels_per_step"] == 1
    # the events' time includes the idle gaps: the kernels' busy time is at most it, and most of it
    assert 0.5 * start.elapsed_time(end) * 1e3 / 5 < s["busy_us"] <= 1.05 * start.elapsed_time(end) * 1e3 / 5
