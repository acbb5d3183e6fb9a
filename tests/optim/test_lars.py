"""LARS against hand-written arithmetic (SPEC.md section 4)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from simclrv2.optim import LARS, set_learning_rate


def lars_reference(
    w0: np.ndarray,
    steps: int,
    lrs: list[float],
    momentum: float,
    weight_decay: float,
    eta: float,
    decay: bool,
    adapt: bool,
) -> np.ndarray:
    """SPEC.md section 4 in numpy, float64, with the gradient g(w) = sin(w) + 0.1·k at step k."""
    w = w0.copy()
    v = np.zeros_like(w)
    for k in range(steps):
        g = np.sin(w) + 0.1 * k
        if decay:
            g = g + weight_decay * w
        r = 1.0
        if adapt:
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            if w_norm > 0 and g_norm > 0:
                r = eta * w_norm / g_norm
        v = momentum * v + lrs[k] * r * g
        w = w - v
    return w


def run_lars(w0: np.ndarray, steps: int, lrs: list[float], **group_flags: object) -> np.ndarray:
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = LARS([{"params": [p], **group_flags}], lr=lrs[0], momentum=0.9, weight_decay=0.01)
    for k in range(steps):
        set_learning_rate(opt, lrs[k])
        p.grad = torch.sin(p.detach()) + 0.1 * k
        opt.step()
    return p.detach().numpy()


def test_one_step_by_hand() -> None:
    # w = [3, 4] (‖w‖ = 5), g = [0.6, 0.8], wd = 0.1: g′ = [0.9, 1.2] (‖g′‖ = 1.5),
    # r = 0.001·5/1.5 = 1/300, v = 1·r·g′ = [0.003, 0.004], w ← [2.997, 3.996].
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([p], lr=1.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        opt.state[p]["momentum_buffer"], torch.tensor([0.003, 0.004], dtype=torch.float64), atol=1e-12
    )
    # The raw gradient is left as it was (weight decay is applied to a copy).
    assert torch.equal(p.grad, torch.tensor([0.6, 0.8], dtype=torch.float64))


@pytest.mark.parametrize(("decay", "adapt"), [(True, True), (False, True), (True, False), (False, False)])
def test_several_steps_match_reference(decay: bool, adapt: bool) -> None:
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    lrs = [0.0, 0.5, 1.0, 2.0, 1.5, 0.7]  # changing like a schedule does
    expected = lars_reference(w0, len(lrs), lrs, 0.9, 0.01, 0.001, decay, adapt)
    got = run_lars(w0, len(lrs), lrs, weight_decay_enabled=decay, lars_adaptation=adapt)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_excluded_group_is_momentum_sgd() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    p_lars = torch.nn.Parameter(w0.clone())
    p_sgd = torch.nn.Parameter(w0.clone())
    lars = LARS(
        [{"params": [p_lars], "weight_decay_enabled": False, "lars_adaptation": False}],
        lr=0.1,
        momentum=0.9,
        weight_decay=0.5,  # must be ignored by this group
    )
    sgd = torch.optim.SGD([p_sgd], lr=0.1, momentum=0.9)
    for _ in range(5):
        for p, opt in ((p_lars, lars), (p_sgd, sgd)):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
    assert torch.allclose(p_lars, p_sgd, atol=1e-6)


def test_groups_keep_their_own_flags() -> None:
    adapted = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    plain = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS(
        [{"params": [adapted]}, {"params": [plain], "weight_decay_enabled": False, "lars_adaptation": False}],
        lr=1.0,
        weight_decay=0.1,
    )
    for p in (adapted, plain):
        p.grad = torch.tensor([0.6, 0.8])
    opt.step()
    assert torch.allclose(adapted.detach(), torch.tensor([2.997, 3.996]))
    assert torch.allclose(plain.detach(), torch.tensor([2.4, 3.2]))  # w − lr·g


def test_zero_norms_give_trust_ratio_one() -> None:
    # ‖w‖ = 0: r = 1, so the step is lr·g (weight decay of a zero tensor is zero).
    zero_weight = torch.nn.Parameter(torch.zeros(3))
    # ‖g′‖ = 0 (no gradient, no decay): r = 1 and nothing moves, no NaN.
    zero_grad = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = LARS([zero_weight, zero_grad], lr=0.5, weight_decay=0.0)
    zero_weight.grad = torch.tensor([1.0, -2.0, 4.0])
    zero_grad.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(zero_weight.detach(), torch.tensor([-0.5, 1.0, -2.0]))
    assert torch.equal(zero_grad.detach(), torch.tensor([1.0, 2.0, 3.0]))


def test_params_without_grad_are_skipped() -> None:
    used = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    opt = LARS([used, unused], lr=0.1)
    used.grad = torch.ones(2)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(2))
    assert unused not in opt.state
    assert not torch.equal(used.detach(), torch.ones(2))


def test_bf16_parameters_stay_bf16() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4).bfloat16())
    opt = LARS([p], lr=1.0, weight_decay=1e-4)
    p.grad = torch.randn(4, 4).bfloat16()
    opt.step()
    assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16


def _model_and_optimizer() -> tuple[torch.nn.Module, LARS]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    groups = [
        {"params": [model[0].weight, model[2].weight]},
        {"params": [model[0].bias, model[2].bias], "weight_decay_enabled": False, "lars_adaptation": False},
    ]
    return model, LARS(groups, lr=0.5, weight_decay=1e-3)


def _train(model: torch.nn.Module, opt: LARS, steps: range) -> None:
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(16, 4, generator=generator)
    for step in steps:
        set_learning_rate(opt, 0.5 + 0.1 * step)
        opt.zero_grad()
        model(inputs + 0.01 * step).pow(2).mean().backward()
        opt.step()


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    model_a, opt_a = _model_and_optimizer()
    _train(model_a, opt_a, range(6))

    model_b, opt_b = _model_and_optimizer()
    _train(model_b, opt_b, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    model_c, opt_c = _model_and_optimizer()  # fresh objects, as after a restart
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["optimizer"])
    assert opt_c.param_groups[1]["lars_adaptation"] is False
    _train(model_c, opt_c, range(3, 6))

    for p_a, p_c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p_a, p_c)
    for p_a, p_c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(opt_a.state[p_a]["momentum_buffer"], opt_c.state[p_c]["momentum_buffer"])


def test_closure_and_deepcopy() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = LARS([p], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == pytest.approx(5.0)
    copy.deepcopy(opt)  # optimizers are deep-copied by some checkpoint and EMA code


def test_invalid_hyperparameters_are_rejected() -> None:
    p = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(ValueError, match="momentum"):
        LARS(p, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(p, lr=0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        LARS(p, lr=0.1, weight_decay=-1.0)
