"""Every device's trainable tensors of a batched group in one buffer, and one AdamW step for all of them.

A :class:`ParameterBank` lays out the N devices of a group as the rows of one ``[N, D]`` buffer: each part (one
LoRA factor of one module, one head tensor) is a view ``[N, *shape]`` of some of its columns, zero-padded per
device to the part's shape (for a LoRA factor: the largest rank any device of the group has on that module) and
all zero for a device that has no such tensor. The gradients live in a second ``[N, D]`` buffer whose views are
the parts' ``.grad``, so autograd accumulates into it in place. The padding is exact: the padded rows of A and
columns of B start at zero and receive zero gradient (``B_pad = 0`` kills ``dA_pad``, ``A_pad = 0`` kills
``dB_pad``), and AdamW with weight decay leaves a zero with zero gradient at zero, so they stay exactly zero.

:class:`BankAdamW` steps every device of the group at once, on the whole buffer: per-device gradient clipping
from the rows' norms, then AdamW with each device's own learning rate and step count; a device without a batch
this step is masked (its tensors, moments and step count stay as they were). A few kernels whatever the number of
devices and tensors, no Python loop over either, nothing read back to the host (the per-device scalars go to the
accelerator from pinned memory). It computes what ``clip_grad_norm_`` and ``torch.optim.AdamW`` (one optimizer per
device) compute, in the same order of operations; only the norm's summation order differs (rounding).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

ADAMW_EPS = 1e-8  # torch.optim.AdamW's default
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


class ParameterBank:
    """The group's trainable tensors: ``parts[key]`` is an ``nn.Parameter`` ``[N, *shape]`` (see the module doc)."""

    def __init__(self, num_devices: int, shapes: dict[str, tuple[int, ...]], device: torch.device | str,
                 dtype: torch.dtype) -> None:
        sizes = {key: math.prod(shape) for key, shape in shapes.items()}
        self.data = torch.zeros(num_devices, sum(sizes.values()), device=device, dtype=dtype)
        self.grad = torch.zeros_like(self.data)
        self.parts: dict[str, nn.Parameter] = {}
        at = 0
        for key, shape in shapes.items():
            columns = slice(at, at + sizes[key])
            part = nn.Parameter(self.data[:, columns].view(num_devices, *shape))
            part.grad = self.grad[:, columns].view(num_devices, *shape)
            self.parts[key] = part
            at += sizes[key]

    @property
    def num_devices(self) -> int:
        return self.data.shape[0]

    def load(self, key: str, device: int, value: torch.Tensor) -> torch.Tensor:
        """Write ``value`` into device ``device``'s corner of part ``key``; returns that corner, a view that
        follows the part (gradients flow through it into the bank)."""
        part = self.parts[key]
        if value.dim() != part.dim() - 1 or any(v > p for v, p in zip(value.shape, part.shape[1:])):
            raise ValueError(f"{key}: a tensor of shape {tuple(value.shape)} does not fit the bank's "
                             f"{tuple(part.shape[1:])}")
        corner = part[(device, *(slice(0, n) for n in value.shape))]
        with torch.no_grad():
            corner.copy_(value.to(part.device, part.dtype))
        return corner

    def zero_grad(self) -> None:
        self.grad.zero_()


@contextmanager
def accumulating_in_place() -> Iterator[None]:
    """Around a backward into a bank: autograd warns that a part's gradient, a strided view of the bank's
    gradient buffer, does not have the layout it would have chosen (a performance hint; the accumulation is in
    place, which is the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        yield


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor copied to ``device`` without waiting for it: on a GPU from pinned memory, asynchronously (a
    plain copy from pageable memory synchronises the host with the GPU's stream)."""
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class BankAdamW:
    """AdamW over a :class:`ParameterBank`, one learning rate per device (see the module doc)."""

    def __init__(self, bank: ParameterBank, lrs: Sequence[float], betas: tuple[float, float], weight_decay: float,
                 max_grad_norm: float | None = None, eps: float = ADAMW_EPS) -> None:
        if len(lrs) != bank.num_devices:
            raise ValueError(f"one learning rate per device: {len(lrs)} for {bank.num_devices} devices")
        self.bank, self.lrs, self.betas = bank, list(lrs), betas
        self.weight_decay, self.max_grad_norm, self.eps = weight_decay, max_grad_norm, eps
        self.exp_avg = torch.zeros_like(bank.data)
        self.exp_avg_sq = torch.zeros_like(bank.data)
        self.steps = [0] * bank.num_devices  # AdamW steps each device has taken (host-side: no read back)

    def step(self, active: Sequence[int]) -> None:
        """Clip every device's gradient to ``max_grad_norm`` and step the devices in ``active``."""
        beta1, beta2 = self.betas
        param, grad = self.bank.data, self.bank.grad
        if self.max_grad_norm:
            norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            grad.mul_((self.max_grad_norm / (norms + CLIP_EPS)).clamp_(max=1.0))
        on = set(active)
        factors = []  # per device: decay, lerp weight, beta2, 1 - beta2, step size, sqrt of bias correction 2
        for d, lr in enumerate(self.lrs):
            if d in on:
                self.steps[d] += 1
                t = self.steps[d]
                factors.append((1 - lr * self.weight_decay, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1 ** t),
                                (1 - beta2 ** t) ** 0.5))
            else:  # masked: every factor leaves its tensor as it is
                factors.append((1.0, 0.0, 1.0, 0.0, 0.0, 1.0))
        columns = to_device(torch.tensor(factors, dtype=torch.float64).to(param.dtype), param.device)  # one copy
        decay, w1, b2, w2, step_size, bc2_sqrt = columns.split(1, dim=1)
        param.mul_(decay)
        self.exp_avg.lerp_(grad, w1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad * w2, grad)
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.eps)
        param.sub_(self.exp_avg / denom * step_size)
