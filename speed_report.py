"""The speed report after generation, as gpt-fast prints it: time to first token, decode tokens/s, and
the weight bandwidth those imply, next to the GPU's peak where there is one."""

import torch

# Peak memory bandwidth in bytes/s from NVIDIA's datasheets, for GPUs whose properties lack the memory
# clock or bus width. Matched against torch.cuda.get_device_name(), longest name first.
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10": 0.6e12,
    "RTX 4090": 1.008e12,
}


def peak_memory_bandwidth(device=0):
    """(bytes/s, how it was found) for a CUDA GPU. From its properties, as NVIDIA's bandwidthTest does:
    two transfers per memory clock (double data rate) over the whole bus; else from PEAK_BANDWIDTH."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8, "from its memory clock and bus width"
    for name in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if name in props.name:
            return PEAK_BANDWIDTH[name], "from its datasheet"
    return None, None


def speed_report(first_token_s, token_times, weight_bytes, peak_bandwidth=None):
    """Report lines after generation, as gpt-fast prints them. token_times are the perf_counter times at
    which each new token was ready; decode speed counts the tokens after the first, which prefill made."""
    lines = [f"Time to first token: {first_token_s:.3f} seconds."]
    decoded = len(token_times) - 1
    if decoded < 1:
        return lines + ["Decode: no tokens after the first, so no decode speed to report."]
    tokens_per_s = decoded / (token_times[-1] - token_times[0])
    bandwidth = weight_bytes * tokens_per_s
    lines.append(f"Decode: {tokens_per_s:.2f} tokens/s ({decoded} tokens after the first).")
    line = f"Weight bandwidth: {bandwidth / 1e9:.2f} GB/s ({weight_bytes / 1e9:.3f} GB of weights x {tokens_per_s:.2f} tokens/s)"
    if peak_bandwidth:
        line += f", {100 * bandwidth / peak_bandwidth[0]:.1f}% of the GPU's peak {peak_bandwidth[0] / 1e12:.2f} TB/s ({peak_bandwidth[1]})"
    return lines + [line + "."]
