"""The CPU path of machines without AVX-512: every backbone's gradients against an fp64 reference.

On AVX2-only CPUs, oneDNN (torch 2.14.1) has a broken kernel for the weight gradient of 1x1 stride-2
convolutions with fewer than 8 input channels in channels-last (see ``StridedPointwiseConv2d`` in
models/resnet.py): it crashes, hangs or returns wrong gradients. Any x86 machine runs that path when oneDNN's
ISA is capped (``ONEDNN_MAX_CPU_ISA=AVX2``) and ATen's kernels are too (``ATEN_CPU_CAPABILITY=avx2``), so the
checks run in a subprocess with both set and a timeout (a crash or a hang fails the test instead of taking
pytest down with it), once with 1 and once with 2 threads.

Whole networks, fp32 (channels-last and NCHW): forward + backward of a backbone (train-mode BN, small
inputs), every parameter's and the input's gradient against the same network in fp64 NCHW (ATen's own
kernels, no oneDNN); error = ||got - ref|| / ||ref|| per tensor. Two details make the comparison sharp:

- The residual blocks' last BNs start at γ = 0.2 instead of 0: with γ = 0 every conv of a residual branch
  gets no gradient at all, and a broken kernel there would go unseen.
- The reference's ReLUs use the masks of the tested run. A ReLU input within rounding of 0 can fall on the
  other side in fp32 and fp64, a difference of the piecewise-linear function, not of the kernels: without
  shared masks, sound fp32 runs differ from fp64 by up to 1e-2 for some seeds and thread counts.

Sound kernels agree to 2e-6..3e-4 (deeper nets more; channels-last BN reduces in a less accurate order than
NCHW); the broken kernel gives 0.1-1 or crashes.

bf16 (autocast, channels-last): rounding to 8 mantissa bits compounds with depth (whole-network errors of
0.6-0.9 for r101-r200 on the native AVX-512 path too), so a whole network says little about the kernels there.
Instead every convolution shape the networks above run is checked on its own, forward and backward, on
bf16-representable inputs against fp64 on the same values (sound: ~3e-3), and the whole networks must give
finite gradients (and be as close as bf16 allows for the shallow ones).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

# Every registered depth at the narrow widths the tests, configs and docs use; sk1 adds ResNet-D (and SK for
# bottlenecks). 32 px with the small-image stem is what the tests run; 64 px covers the ImageNet stems.
DEPTHS = (18, 34, 50, 101, 152, 200)
# (r101-r200 repeat r50's layer shapes, only more often: their wider versions add time, not kernels.)
CASES = [
    *[(f"r{d}_{w}x_sk0", True, 32) for d in (18, 34, 50) for w in ("0.0625", "0.125", "0.25")],
    *[(f"r{d}_0.0625x_sk0", True, 32) for d in (101, 152, 200)],
    *[(f"r{d}_0.0625x_sk1", True, 32) for d in DEPTHS],
    ("r50_0.25x_sk1", True, 32),
    ("r18_0.0625x_sk0", False, 64),
    ("r18_0.0625x_sk1", False, 64),
    ("r50_0.0625x_sk0", False, 64),
    ("r50_0.0625x_sk1", False, 64),
]
BATCH = 8
LAST_BN_GAMMA = 0.2
FP32_TOLERANCE = 1e-3
BF16_KERNEL_TOLERANCE = 1e-2
BF16_SHALLOW_TOLERANCE = 0.15  # whole r18/r34 networks in bf16 (measured 0.03-0.06)
WORKER_TIMEOUT = 300  # seconds; the worker takes 25-35 s (1 or 2 threads) on the 2-core development VM
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
X86_64_LINUX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _share_relu_masks(tested: torch.nn.Module, reference: torch.nn.Module) -> None:
    """The reference's ReLUs replay the masks (input > 0) that the tested network's ReLUs record, in call
    order (one ReLU module may run several times per forward)."""
    tested_relus = {n: m for n, m in tested.named_modules() if isinstance(m, torch.nn.ReLU)}
    masks: dict[str, list[torch.Tensor]] = {name: [] for name in tested_relus}
    for name, module in tested_relus.items():
        module.register_forward_pre_hook(lambda _m, inp, name=name: masks[name].append(inp[0] > 0))
    for name, module in reference.named_modules():
        if isinstance(module, torch.nn.ReLU):

            def replay(_self: torch.nn.Module, x: torch.Tensor, name: str = name) -> torch.Tensor:
                return x * masks[name].pop(0).to(x.dtype)

            module.forward = types.MethodType(replay, module)  # type: ignore[method-assign]


def _gradients(model: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = model(x)
    (h.to(g.dtype) * g).sum().backward()
    assert x.grad is not None
    return [x.grad] + [p.grad for p in model.parameters()]  # type: ignore[misc]


def network_errors(name: str, small_images: bool, size: int, conv_shapes: set) -> dict[str, list]:
    """{mode: [worst relative error, tensor]} for fp32-channels-last, fp32-nchw and bf16-channels-last; adds
    the convolution shapes the network runs to ``conv_shapes``."""
    from simclrv2.models import create_backbone

    torch.manual_seed(0)
    base = create_backbone(name, small_images=small_images)
    for block in base.modules():
        if hasattr(block, "last_bn"):
            torch.nn.init.constant_(block.last_bn.weight, LAST_BN_GAMMA)
    for conv in base.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.register_forward_pre_hook(
                lambda m, inp: conv_shapes.add((*inp[0].shape, m.out_channels, m.kernel_size[0], m.stride[0]))
            )
    x = torch.rand(BATCH, 3, size, size)
    g = torch.randn(BATCH, base.num_features)
    names = ["input"] + [n for n, _ in base.named_parameters()]
    out: dict[str, list] = {}
    for mode, layout, bf16 in (
        ("fp32-channels-last", torch.channels_last, False),
        ("fp32-nchw", torch.contiguous_format, False),
        ("bf16-channels-last", torch.channels_last, True),
    ):
        tested = copy.deepcopy(base).to(memory_format=layout)
        reference = copy.deepcopy(base).double()
        _share_relu_masks(tested, reference)
        got = _gradients(tested, x.contiguous(memory_format=layout), g, bf16)
        ref = _gradients(reference, x.double(), g.double(), bf16=False)
        errors = [
            relative_error(a, b) if torch.isfinite(a).all() else float("inf")
            for a, b in zip(got, ref, strict=True)
        ]
        worst = max(range(len(errors)), key=errors.__getitem__)
        out[mode] = [errors[worst], names[worst]]
    return out


def bf16_conv_error(shape: tuple) -> float:
    """Worst relative error of y, dx and dw of one convolution (channels-last, bf16 autocast) against fp64
    on the same bf16-representable values."""
    n, c, h, w, out_channels, k, stride = shape
    torch.manual_seed(1)
    x = torch.randn(n, c, h, w).bfloat16().float()
    weight = (torch.randn(out_channels, c, k, k) / (c * k * k) ** 0.5).bfloat16().float()
    pad = k // 2

    def run(x: torch.Tensor, weight: torch.Tensor, gy: torch.Tensor | None, bf16: bool) -> list[torch.Tensor]:
        x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = F.conv2d(x, weight, stride=stride, padding=pad)
        y.backward(torch.ones_like(y) if gy is None else gy.to(y.dtype))
        return [y, x.grad, weight.grad]  # type: ignore[list-item]

    gy = torch.randn(run(x.double(), weight.double(), None, False)[0].shape).bfloat16()
    cl = torch.channels_last
    got = run(
        x.contiguous(memory_format=cl),
        weight.contiguous(memory_format=cl),
        gy.contiguous(memory_format=cl),
        True,
    )
    ref = run(x.double(), weight.double(), gy.double(), False)
    return max(relative_error(a.float(), b) for a, b in zip(got, ref, strict=True))


def _last_started(stdout: str) -> str:
    started = [json.loads(line)[1] for line in stdout.splitlines() if line.startswith('["start"')]
    return started[-1] if started else "its start"


def _run_worker(threads: int) -> tuple[dict, dict]:
    env = {**os.environ, **AVX2_ENV, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, str(threads), json.dumps(CASES)]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"the worker hung (> {WORKER_TIMEOUT} s, {threads} threads) in {_last_started(out)}")
    assert res.returncode == 0, (
        f"the worker died (rc {res.returncode}, {threads} threads) in {_last_started(res.stdout)}: "
        f"{res.stderr[-2000:]}"
    )
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    networks = {line[1]: line[2] for line in lines if line[0] == "network"}
    kernels = {line[1]: line[2] for line in lines if line[0] == "bf16-conv"}
    assert len(networks) == len(CASES) and kernels
    return networks, kernels


def test_the_avx2_path_is_the_one_tested() -> None:
    """Under the two variables, ATen reports AVX2 and oneDNN runs AVX2 implementations, the broken kernel's
    family (``jit_1x1:avx2``) among them, and nothing wider."""
    probe = (
        "import torch; print('aten', torch.backends.cpu.get_cpu_capability());"
        "x = torch.randn(8, 16, 8, 8).to(memory_format=torch.channels_last).requires_grad_();"
        "c = torch.nn.Conv2d(16, 8, 1, stride=2, bias=False).to(memory_format=torch.channels_last);"
        "c(x).sum().backward()"
    )
    env = {**os.environ, **AVX2_ENV, "ONEDNN_VERBOSE": "1"}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "aten AVX2" in res.stdout
    assert "isa:Intel AVX2" in res.stdout, res.stdout[:2000]
    impls = [
        line.split(",")[6] for line in res.stdout.splitlines() if ",primitive,exec,cpu,convolution," in line
    ]
    assert impls and all(impl.endswith(":avx2") for impl in impls), impls
    assert "jit_1x1:avx2" in impls, impls  # the weight gradient of a 1x1 stride-2 convolution


@pytest.mark.skipif(not X86_64_LINUX, reason="the AVX2 oneDNN path exists on x86-64 only")
@pytest.mark.parametrize("threads", [1, 2])
def test_backbone_gradients_on_the_avx2_path_match_fp64(threads: int) -> None:
    networks, kernels = _run_worker(threads)
    failures = []
    for case, modes in networks.items():
        for mode, (error, tensor) in modes.items():
            if mode.startswith("bf16"):
                shallow = case.startswith(("r18_", "r34_")) and "small-stem" in case
                tolerance = BF16_SHALLOW_TOLERANCE if shallow else float("inf")  # finite: inf fails
                ok = error < tolerance
            else:
                ok = error <= FP32_TOLERANCE
            if not ok:
                failures.append(f"{case} {mode}: relative error {error:.2e} in the gradient of {tensor}")
    for shape, error in kernels.items():
        if not error <= BF16_KERNEL_TOLERANCE:
            failures.append(
                f"bf16 convolution (N, C, H, W, out, k, stride) = {shape}: relative error {error:.2e}"
            )
    assert not failures, "\n".join(failures)


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]))
    shapes: set = set()
    for name, small, size in json.loads(sys.argv[2]):
        key = f"{name} {'small' if small else 'imagenet'}-stem {size}px"
        print(json.dumps(["start", key]), flush=True)
        print(json.dumps(["network", key, network_errors(name, small, size, shapes)]), flush=True)
    for shape in sorted(shapes):
        print(json.dumps(["start", f"bf16 convolution {shape}"]), flush=True)
        print(json.dumps(["bf16-conv", str(shape), bf16_conv_error(shape)]), flush=True)
