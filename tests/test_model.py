"""model.py: the GPT matches transformers' GPT2LMHeadModel, parameter for parameter and logit for logit."""

import copy

import nvtripy as tp
import pytest
import torch
from helpers import PARITY_CONFIGS
from transformers import GPT2Config, GPT2LMHeadModel

import weight_loader
from checkpoint import Checkpoint, open_checkpoint
from model import GPT, GPTConfig, gelu_new, linear_layer
from quant_modes import PER_TENSOR, QUANT_MODES, QuantMode

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
DTYPES = {"float32": tp.float32, "float16": tp.float16}


def device_tensor(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu"))


def compiled_gpt(directory, dtype):
    """Loads a checkpoint the way example.py does and compiles it for every length up to its block size."""
    model = weight_loader.load_model(open_checkpoint(directory), dtype)
    seq_len = tp.NamedDimension("seq_len", 1, 8, model.config.block_size)
    return model, tp.compile(model, args=[tp.InputInfo((1, seq_len), dtype=tp.int32)])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_transformers(parity_checkpoints, name, dtype):
    directory, hf_model = parity_checkpoints[name]
    # The reference runs at the same precision: fp16 is compared with transformers in fp16.
    reference = hf_model if dtype == "float32" else copy.deepcopy(hf_model).half()
    _, compiled = compiled_gpt(directory, DTYPES[dtype])
    block_size = hf_model.config.n_positions
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for length in (1, 7, block_size):
        idx = torch.randint(0, hf_model.config.vocab_size, (1, length), generator=generator)
        logits = torch.from_dlpack(compiled(device_tensor(idx.to(torch.int32)))).float()
        with torch.no_grad():
            expected = reference(idx).logits.float()
        assert logits.shape == expected.shape
        worst = max(worst, (logits - expected).abs().max().item())
    print(f"parity {name} {dtype}: max |logit diff| = {worst:.2e}")  # shown with pytest -s
    assert worst < TOLERANCE[dtype], f"{name} {dtype}: max |logit difference| {worst:.2e}"


def test_parameter_names_are_transformers_state_dict_keys():
    hf_config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=8)
    config = weight_loader.gpt_config(Checkpoint("tiny", True, hf_config, encoding=None))
    ours = GPT(config).state_dict()
    theirs = GPT2LMHeadModel(hf_config).state_dict()
    assert set(ours) == set(theirs)
    for key, param in ours.items():
        shape = tuple(theirs[key].shape)
        expected = shape[::-1] if key.endswith(weight_loader.TRANSPOSED) else shape
        assert tuple(param.shape) == expected, key


def test_gelu_is_gpt2s_tanh_approximation():
    x = torch.linspace(-6, 6, 97)
    ours = torch.from_dlpack(gelu_new(tp.Tensor(x)).eval())
    assert torch.allclose(ours, torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6)
    # tp.gelu is the erf form; the two differ by more than the parity tolerance.
    erf_form = torch.from_dlpack(tp.gelu(tp.Tensor(x)).eval())
    assert (erf_form - ours).abs().max() > 1e-4


def test_attention_is_causal(tiny_checkpoint):
    """Changing a token changes no logits before it."""
    _, compiled = compiled_gpt(tiny_checkpoint, tp.float32)
    idx = torch.arange(10, dtype=torch.int32)[None] + 40
    changed = idx.clone()
    changed[0, 6] = 7
    before = torch.from_dlpack(compiled(device_tensor(idx))).clone()
    after = torch.from_dlpack(compiled(device_tensor(changed)))
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.equal(before[:, 6:], after[:, 6:])


QUANTIZED_SHAPES = {  # n = 256, so the MLP's inner size is 1024; quantization.tripy_quantized_state_dict's layouts
    None: {"transformer.h.0.mlp.c_fc.weight": (1024, 256)},
    "int8-weight-only": {
        "transformer.h.0.mlp.c_fc.weight": (1024, 256),
        "transformer.h.0.mlp.c_fc.weight_scale": (1024,),
    },
    "int4-weight-only": {
        "transformer.h.0.mlp.c_fc.weight": (256, 1024),
        "transformer.h.0.mlp.c_fc.weight_scale": (2, 1024),
        "transformer.h.0.mlp.c_proj.weight_scale": (8, 256),
        "transformer.h.0.attn.c_proj.pre_quant_scale": (256,),
        "transformer.h.0.mlp.c_proj.pre_quant_scale": (1024,),
    },
    "float8": {
        "transformer.h.0.mlp.c_fc.weight_scale": (),
        "transformer.h.0.mlp.c_fc.input_scale": (),
        "lm_head.weight_scale": (),
        "lm_head.input_scale": (),
    },
}


@pytest.mark.parametrize("quant_mode", list(QUANTIZED_SHAPES))
def test_linear_layers_are_built_in_one_place_per_quant_mode(quant_mode):
    mode = QUANT_MODES[quant_mode] if quant_mode else None
    config = GPTConfig(num_layers=1, embedding_size=256, num_heads=2, vocab_size=10, block_size=8, quant_mode=mode)
    shapes = {key: tuple(map(int, param.shape)) for key, param in GPT(config).state_dict().items()}
    assert {key: shapes.get(key) for key in QUANTIZED_SHAPES[quant_mode]} == QUANTIZED_SHAPES[quant_mode]
    scales = {key.rpartition(".")[2] for key in shapes if key.endswith("_scale")}
    assert scales == {
        name for key in QUANTIZED_SHAPES[quant_mode] if (name := key.rpartition(".")[2]).endswith("_scale")
    }
    # AWQ's scales of the layers fed by a LayerNorm are folded into it; lm_head is quantized in float8 only.
    assert not any(key.endswith(("c_attn.pre_quant_scale", "c_fc.pre_quant_scale")) for key in shapes)
    assert ("lm_head.weight_scale" in shapes) == (quant_mode == "float8")
    assert isinstance(linear_layer(GPTConfig(), 4, 8, bias=True), tp.Linear)
    # A mode is built from its description, not its name: int8 per tensor, weight-only, is a new mode.
    int8_per_tensor = QuantMode(
        "int8-per-tensor",
        "int8",
        weight_bits=8,
        maxbound=127.0,
        granularity=PER_TENSOR,
        modelopt_config="INT8_DEFAULT_CFG",
    )
    layer = linear_layer(GPTConfig(quant_mode=int8_per_tensor), 4, 8, bias=True)
    assert layer.quant_dtype == tp.int8 and layer.weight_quant_dim is None and layer.input_scale is None
    assert tuple(map(int, layer.weight_scale.shape)) == ()


def test_weight_bytes_count_the_tied_embedding_once(parity_checkpoints):
    directory, reference = parity_checkpoints["eps"]
    model, _ = compiled_gpt(directory, tp.float32)
    assert model.weight_bytes() == 4 * sum(p.numel() for p in reference.parameters())  # transformers ties them too


@pytest.mark.parametrize("quant_mode", ["int8-weight-only", "int4-weight-only"])
def test_weight_bytes_count_quantized_weights_at_their_quantized_size(quant_mode):
    shape = dict(num_layers=2, num_heads=2, embedding_size=128, vocab_size=10, block_size=4)
    full, quantized = GPT(GPTConfig(**shape)), GPT(GPTConfig(**shape, quant_mode=QUANT_MODES[quant_mode]))
    per_layer = 128 * (3 * 128) + 128 * 128 + 128 * (4 * 128) + (4 * 128) * 128  # the four linear weights
    if quant_mode == "int8-weight-only":
        scales = 3 * 128 + 128 + 4 * 128 + 128  # one float32 scale per output channel
        assert quantized.weight_bytes() == full.weight_bytes() - 2 * (3 * per_layer - 4 * scales)
    else:
        # half a byte a weight; a float32 scale per block of 128 inputs of each output, and AWQ's
        # pre_quant_scale for the two layers no LayerNorm feeds
        scales = (3 * 128 + 128 + 4 * 128 + 4 * 128) + (128 + 4 * 128)
        assert quantized.weight_bytes() == full.weight_bytes() - 2 * (3.5 * per_layer - 4 * scales)


def test_real_gpt2_logits_match_transformers(real_gpt2):
    hf_model = GPT2LMHeadModel.from_pretrained(real_gpt2, local_files_only=True).eval()
    _, compiled = compiled_gpt(real_gpt2, tp.float32)
    idx = torch.randint(0, 50257, (1, 40), generator=torch.Generator().manual_seed(0))
    logits = torch.from_dlpack(compiled(device_tensor(idx.to(torch.int32))))
    with torch.no_grad():
        expected = hf_model(idx).logits
    # GPT-2's logits run to about -100 to -200, so fp32 rounding shows at a few 1e-4.
    assert (logits - expected).abs().max().item() < 2e-3
