"""speed_report.py: the report's lines, and the GPU's peak memory bandwidth from its properties or a table."""

import types

import torch

import speed_report



def test_speed_report_lines():
    lines = speed_report.speed_report(0.25, [10.0, 10.5, 11.0], 2_000_000_000)
    assert lines == [
        "Time to first token: 0.250 seconds.",
        "Decode: 2.00 tokens/s (2 tokens after the first).",
        "Weight bandwidth: 4.00 GB/s (2.000 GB of weights x 2.00 tokens/s).",
    ]
    with_peak = speed_report.speed_report(0.25, [10.0, 10.5, 11.0], 2_000_000_000, (4e12, "from its datasheet"))
    assert with_peak[-1].endswith(", 0.1% of the GPU's peak 4.00 TB/s (from its datasheet).")
    assert speed_report.speed_report(0.1, [3.0], 10)[1] == "Decode: no tokens after the first, so no decode speed to report."


def test_peak_bandwidth_from_the_device_properties_or_the_table(monkeypatch):
    h100 = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", memory_clock_rate=2619000, memory_bus_width=5120)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h100)
    bandwidth, how = speed_report.peak_memory_bandwidth()
    assert round(bandwidth / 1e12, 2) == 3.35 and how == "from its memory clock and bus width"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="NVIDIA H100 PCIe"))
    assert speed_report.peak_memory_bandwidth() == (2.0e12, "from its datasheet")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="Some GPU"))
    assert speed_report.peak_memory_bandwidth() == (None, None)
