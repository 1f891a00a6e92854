"""speed_report.py: the report's lines, and the GPU's peak memory bandwidth from its properties or a table."""

import types

import torch

import speed_report


def test_speed_report_lines():
    steps = [(10.0, 1), (10.5, 1), (11.0, 1)]
    lines = speed_report.speed_report(9.75, steps, 2_000_000_000)
    assert lines == [
        "Time to first token: 0.250 seconds.",
        "Decode: 2.00 tokens/s (2 tokens after the first).",
        "Weight bandwidth: 4.00 GB/s (2.00 GB of weights x 2.00 tokens/s).",
    ]
    with_peak = speed_report.speed_report(9.75, steps, 2_000_000_000, peak_bandwidth=(4e12, "from its datasheet"))
    assert with_peak[-1].endswith(", 0.1% of the GPU's peak 4.00 TB/s (from its datasheet).")
    assert (
        speed_report.speed_report(2.9, [(3.0, 1)], 10)[1]
        == "Decode: no tokens after the first, so no decode speed to report."
    )
    assert speed_report.speed_report(2.9, [], 10) == ["No tokens were generated: every sample ended at once."]


def test_several_samples_count_every_token_and_read_the_weights_once_a_step():
    # 4 samples, 3 steps after the first; one sample ended after the second step (3 + 4 + 3 tokens).
    steps = [(10.0, 4), (10.5, 3), (11.0, 4), (11.5, 3)]
    lines = speed_report.speed_report(9.0, steps, 498_000_000, num_samples=4)
    assert lines[1] == "Decode: 6.67 tokens/s (10 tokens of 4 samples, in 3 steps after the first)."
    assert lines[2] == "Weight bandwidth: 996 MB/s (498 MB of weights x 2.00 steps/s)."


def test_byte_counts_are_in_units_that_show_them():
    assert [speed_report.bytes_text(n) for n in (515_000, 1_310_000, 498_000_000, 1_700_000_000, 9_740_000_000)] == [
        "515 kB",
        "1.31 MB",
        "498 MB",
        "1.70 GB",
        "9.74 GB",
    ]
    assert speed_report.bytes_text(300) == "0.30 kB" and speed_report.bytes_text(12_345_678) == "12.3 MB"


def test_peak_bandwidth_from_the_device_properties_or_the_table(monkeypatch):
    h100 = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", memory_clock_rate=2619000, memory_bus_width=5120)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h100)
    bandwidth, how = speed_report.peak_memory_bandwidth()
    assert round(bandwidth / 1e12, 2) == 3.35 and how == "from its memory clock and bus width"
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="NVIDIA H100 PCIe")
    )
    assert speed_report.peak_memory_bandwidth() == (2.0e12, "from its datasheet")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="Some GPU"))
    assert speed_report.peak_memory_bandwidth() == (None, None)
