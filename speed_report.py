"""The speed report after generation, as gpt-fast prints it: time to first token, decode tokens/s, and
the weight bandwidth those imply, next to the GPU's peak where there is one."""

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
    import torch  # only here: the rest of this module is plain arithmetic, for any backend

    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8, "from its memory clock and bus width"
    for name in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if name in props.name:
            return PEAK_BANDWIDTH[name], "from its datasheet"
    return None, None


def speed_report(start, steps, weight_bytes, num_samples=1, peak_bandwidth=None):
    """Report lines after generation, as gpt-fast prints them. `steps` holds, for each generation step,
    the perf_counter time its tokens were ready and how many samples made a token in it; `start` is when
    generation began. Decode speed counts the steps after the first, which prefill made: tokens/s counts
    the tokens of all samples, the bandwidth the weights read once a step."""
    if not steps or steps[0][1] == 0:
        return ["No tokens were generated: every sample ended at once."]
    lines = [f"Time to first token: {steps[0][0] - start:.3f} seconds."]
    decode_steps = steps[1:]
    if not decode_steps:
        return lines + ["Decode: no tokens after the first, so no decode speed to report."]
    seconds = steps[-1][0] - steps[0][0]
    tokens = sum(count for _, count in decode_steps)
    tokens_per_s, steps_per_s = tokens / seconds, len(decode_steps) / seconds
    bandwidth = weight_bytes * steps_per_s
    if num_samples == 1:
        lines.append(f"Decode: {tokens_per_s:.2f} tokens/s ({tokens} tokens after the first).")
        per = f"{steps_per_s:.2f} tokens/s"
    else:
        lines.append(
            f"Decode: {tokens_per_s:.2f} tokens/s ({tokens} tokens of {num_samples} samples, "
            f"in {len(decode_steps)} steps after the first)."
        )
        per = f"{steps_per_s:.2f} steps/s"
    line = f"Weight bandwidth: {bytes_text(bandwidth)}/s ({bytes_text(weight_bytes)} of weights x {per})"
    if peak_bandwidth:
        peak, how_found = peak_bandwidth
        line += f", {100 * bandwidth / peak:.1f}% of the GPU's peak {peak / 1e12:.2f} TB/s ({how_found})"
    return lines + [line + "."]


def bytes_text(n):
    """A byte count in the unit that shows it, to three figures: 9.74 GB, 498 MB, 1.31 MB, 515 kB."""
    unit, size = next(((unit, size) for unit, size in (("GB", 1e9), ("MB", 1e6)) if n >= size), ("kB", 1e3))
    value = n / size
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{decimals}f} {unit}"
