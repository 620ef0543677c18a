"""The paper's 94,696-parameter CNN for MNIST autoregression (METHODS.md §3, §A.5.3)."""

from __future__ import annotations

import math

import torch
from torch import nn

CHANNELS = 20  # width of the residual stream
STAGES = 5  # 28 → 14 → 7 → 4 → 2 → 1
BLOCKS_PER_STAGE = 4


class Atan(torch.autograd.Function):
    """torch.atan with a leaner backward, grad / (1 + x²) computed in one buffer.

    Why: on CPU the CNN's time goes largely to elementwise passes over (B, 120, 28, 28) tensors, and autograd's own
    atan backward allocates three of them. Under ``create_graph`` (Hessian-vector products) the plain
    differentiable formula is used, so double backward works.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.atan(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return grad / (1 + x * x)
        denominator = x.square().add_(1)
        return torch.div(grad, denominator, out=denominator)


def atan(x: torch.Tensor) -> torch.Tensor:
    return Atan.apply(x)


class ResidualBlock(nn.Module):
    """x + Conv1×1(120→20)(atan(depthwise Conv3×3(40→120)(atan(Conv1×1(20→40)(x))))); 4,460 parameters."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.expand = nn.Conv2d(channels, 2 * channels, 1)
        # Depthwise with multiplier 3: output channel i·3 + m reads input channel i, as TF's DepthwiseConv2D.
        self.depthwise = nn.Conv2d(2 * channels, 6 * channels, 3, padding=1, groups=2 * channels)
        self.project = nn.Conv2d(6 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return x + self.project(atan(self.depthwise(atan(self.expand(x)))))
        # Evaluation and sampling: the same arithmetic in place, three fewer large allocations per block.
        return self.project(self.depthwise(self.expand(x).atan_()).atan_()).add_(x)


class AutoregressionCNN(nn.Module):
    """(B, 5, 28, 28) inputs → (B, 256) logits of the queried pixel's intensity.

    A 1×1 stem conv 5→20 with no activation, then five stages of four :class:`ResidualBlock` and a 2×2 average pool
    (stride 2; TF "SAME": the odd 7→4 stage divides the edge windows by their valid count, which ``ceil_mode`` with
    ``count_include_pad=False`` does), then a dense layer 20→256. Parameters, in :meth:`parameters` order (the
    paper's flattening order): stem W, b; per block W1, b1, Wd, bd, W2, b2; dense W, b (PyTorch layouts). Every
    weight and bias is drawn N(0, 1/(fan_in + 1)) by :meth:`reset_parameters` from the given generator.
    ``channels`` and ``blocks_per_stage`` (paper: 20 and 4) make the reduced CNN of the ``mnist_small`` task, which is
    not the paper's network.
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        channels: int = CHANNELS,
        blocks_per_stage: int = BLOCKS_PER_STAGE,
    ):
        super().__init__()
        self.blocks_per_stage = blocks_per_stage
        self.stem = nn.Conv2d(5, channels, 1)
        self.blocks = nn.ModuleList(ResidualBlock(channels) for _ in range(STAGES * blocks_per_stage))
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        self.dense = nn.Linear(channels, 256)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every weight and bias from N(0, std 1/√(fan_in + 1)) (METHODS.md §A.5.3), in parameter order.

        Draws are made in float64 on the CPU and then copied, so a seed gives the same network on every
        dtype and device.
        """
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                std = 1.0 / math.sqrt(layer.weight[0].numel() + 1)  # fan_in = in_channels/groups × kernel area
                for tensor in (layer.weight, layer.bias):
                    draw = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * std
                    tensor.copy_(draw)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.stem(inputs)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % self.blocks_per_stage == self.blocks_per_stage - 1:
                x = self.pool(x)
        return self.dense(x.flatten(1))
