"""What each quantization mode is: one description per mode, read by every part that depends on it.

model.py builds its quantized layers from these attributes, quantization.py its ModelOpt config and
its state-dict layout, the speed report its byte counts, the backend its GPU check. The command line
turns `--quant-mode NAME` into its description while it reads the arguments, before torch loads.
"""

from dataclasses import dataclass
from typing import Optional

# Calibration: 32 samples of at most 256 tokens (the command line's defaults; quantization.py cuts them).
CALIB_SAMPLES = 32
CALIB_MAX_LENGTH = 256

PER_CHANNEL = "per output channel"  # one scale per row of the (out, in) weight
PER_TENSOR = "per tensor"  # one scale for the whole weight (and one for the layer's input)
PER_BLOCK = "per block"  # one scale per block of consecutive inputs of each output


@dataclass(frozen=True)
class QuantMode:
    """One quantization mode: what it quantizes, how, and what that costs and needs."""

    name: str
    quant_dtype: str  # the nvtripy dtype of a quantized weight: "int8", "int4" or "float8"
    weight_bits: int  # bits of one quantized weight: what a decode step reads of it
    maxbound: float  # the largest magnitude of the quantized type; a scale is calibrated amax / maxbound
    granularity: str  # PER_CHANNEL, PER_TENSOR or PER_BLOCK
    modelopt_config: str  # the name of ModelOpt's predefined config the mode starts from
    quantizes_inputs: bool = False  # the layer's input too (per tensor), not only its weight
    quantizes_lm_head: bool = False  # lm_head too, besides the four linear layers of every block
    block_size: Optional[int] = None  # PER_BLOCK: inputs per block; each layer's input size must be a multiple
    awq: bool = False  # AWQ's per-input pre_quant_scale, folded into a LayerNorm or kept as a parameter
    min_compute_capability: Optional[tuple] = None  # the oldest GPU that runs it on TensorRT

    @property
    def weight_in_out(self):
        """Whether the quantized weight is stored (in, out): nvtripy's block-wise quantization blocks
        dim 0, and AWQ's blocks run along the inputs, so a PER_BLOCK weight keeps its inputs first."""
        return self.granularity == PER_BLOCK

    def __str__(self):
        return self.name


QUANT_MODES = {
    mode.name: mode
    for mode in (
        QuantMode(
            "int8-weight-only",
            "int8",
            weight_bits=8,
            maxbound=127.0,
            granularity=PER_CHANNEL,
            modelopt_config="INT8_DEFAULT_CFG",
        ),
        # AWQ's int4: blocks of 128 consecutive inputs share a scale (INT4_AWQ_CFG's block_sizes {-1: 128}).
        QuantMode(
            "int4-weight-only",
            "int4",
            weight_bits=4,
            maxbound=7.0,
            granularity=PER_BLOCK,
            modelopt_config="INT4_AWQ_CFG",
            block_size=128,
            awq=True,
        ),
        # e4m3 weights and inputs, on Ada (8.9) or Hopper (9.0) GPUs.
        QuantMode(
            "float8",
            "float8",
            weight_bits=8,
            maxbound=448.0,
            granularity=PER_TENSOR,
            modelopt_config="FP8_DEFAULT_CFG",
            quantizes_inputs=True,
            quantizes_lm_head=True,
            min_compute_capability=(8, 9),
        ),
    )
}
