"""The Dynamic Alignment Unit convolution of CoDA-Nets (Böhle, Fritz, Schiele, CVPR 2021).

At every output position a DAU convolution computes ``D`` dynamic weight vectors from the input,
``w(x) = B(A ∗ x) + b`` (A: a k×k convolution to ``rank`` channels without bias; B: a 1×1
convolution from ``rank`` to ``D·C_in·k²`` channels with bias), and applies each to the input patch
``x_p``, divided by a norm of the weight: ``a_j = w_j(x)·x_p / norm(w_j(x))`` with the squashing
norm ``(1 + ‖w‖²)/‖w‖`` (effective weight norm below 1/2) or the L2 norm ``‖w‖``.

Materialising the weights, as the official code does, costs a ``[N, C_in·k², D, H', W']`` tensor
per layer (several, counting autograd). Here they are never formed:

* numerator: with ``h = A ∗ x`` and ``M_j = [B_j, b_j]`` (``C_in·k² × (rank+1)``, B's rows for unit
  j and its bias), ``w_j·x_p = [h; 1]·(M_jᵀ x_p)``, and ``M_jᵀ x_p`` for every j is one ordinary
  convolution of x with the ``D·(rank+1)`` filters ``M`` reshaped to ``[D·(rank+1), C_in, k, k]``;
* norm: with the QR factorisation ``M_j = Q_j T_j``, ``‖w_j‖ = ‖T_j [h; 1]‖``, a 1×1 convolution
  of h (``T_j`` is at most ``(rank+1) × (rank+1)``).

The Gram-matrix form ``‖w‖² = hᵀB_jᵀB_j h + 2 b_jᵀB_j h + ‖b_j‖²`` would be as cheap, but it
subtracts large numbers where ``B_j h`` and ``b_j`` nearly cancel: its float32 error grows with the
square of ``(‖B_j h‖ + ‖b_j‖) / ‖w_j‖`` (1e-2 relative at a ratio of 100, against 3e-5 for the
explicit formula), and it can turn negative. The QR form sums squares of a rotated ``w_j`` and is as
accurate as the explicit formula (Householder QR is backward stable). Its cost depends on the weights
only, ``~2·D·C_in·k²·(rank+1)²`` flops: negligible at training batch sizes, most of the time for single
images of ``coda_simple9_in100`` (rank 256), so in eval mode without weight gradients T is cached.

The official channel layout of B's output is kept (channel ``patch_index·D + j``, patch index
running over input channel, kernel row, kernel column as in ``F.unfold``), so official checkpoints
(keys ``weight_mod.weighting_f.{0.weight, 1.weight, 1.bias}``) load as they are.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .detach import Detachable
from .fastpath import FilterCache, weights_frozen

__all__ = ["DAU_NORMS", "CoDAConv2d", "DAUWeights"]

_size_2_t = int | tuple[int, int]
DAUNorm = Literal["squash", "l2"]
DAU_NORMS: tuple[str, ...] = ("squash", "l2")


class DAUWeights(nn.Module):
    """The low-rank generator of the dynamic weights: ``weighting_f = Sequential(A, B)`` as in the
    official ``DAUWeights``, so the state-dict keys are ``weighting_f.{0.weight, 1.weight, 1.bias}``.

    Args:
        in_channels, num_daus, kernel_size, stride, padding: the DAU convolution's geometry.
        rank: channels of ``A ∗ x``.
        groups: groups of the 1×1 convolution B (must divide ``rank`` and ``num_daus·C_in·k²``).
    """

    def __init__(self, in_channels: int, num_daus: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], rank: int, groups: int = 1,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__()
        patch = in_channels * kernel_size[0] * kernel_size[1]
        if rank % groups or (num_daus * patch) % groups:
            raise ValueError(
                f"groups={groups} must divide rank={rank} and num_daus·C_in·k²={num_daus * patch}; pick another groups"
            )
        factory = {"device": device, "dtype": dtype}
        self.weighting_f = nn.Sequential(
            nn.Conv2d(in_channels, rank, kernel_size, stride, padding, bias=False, **factory),
            nn.Conv2d(rank, num_daus * patch, 1, groups=groups, bias=True, **factory),
        )
        self.num_daus, self.patch_size = num_daus, patch

    def low_rank(self, x: Tensor) -> Tensor:
        """``h = A ∗ x``: ``[N, C_in, H, W] -> [N, rank, H', W']``."""
        return self.weighting_f[0](x)

    def factors(self) -> Tensor:
        """``M`` with ``w_j(x) = M_j [h; 1]`` at every position: ``[D, C_in·k², rank + 1]``.

        B's output channel ``p·D + j`` (patch index p, unit j) is row p of ``M_j``; a grouped B is
        expanded to its block-diagonal dense matrix.
        """
        conv_b = self.weighting_f[1]
        weight = conv_b.weight.flatten(1)  # [D·P, rank / groups]
        if conv_b.groups > 1:
            weight = torch.block_diag(*weight.chunk(conv_b.groups, dim=0))  # [D·P, rank]
        d, p = self.num_daus, self.patch_size
        b_rows = weight.view(p, d, -1).transpose(0, 1)  # [D, P, rank]
        bias = conv_b.bias.view(p, d).t()  # [D, P]
        return torch.cat([b_rows, bias.unsqueeze(-1)], dim=-1)


class CoDAConv2d(Detachable, nn.Module):
    """Dynamic Alignment Unit convolution, state-dict compatible with the official ``CoDAConv2d``.

    Output ``[N, D, H', W']`` with ``a_j = w_j(x)·x_p / norm(w_j(x))`` (see the module docstring);
    in explanation mode the dynamic weights and the norm are constants for autograd, so the layer is
    linear in x with the per-position weights ``w_j(x) / norm(w_j(x))``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: number of DAUs ``D``.
        kernel_size, stride: as for ``nn.Conv2d``.
        padding: default ``(k - 1) // 2`` (the official default).
        rank: rank of the weight generator (channels of ``A ∗ x``).
        norm: ``"squash"`` (``(1 + ‖w‖²)/‖w‖``, CoDA-Nets' SQ models) or ``"l2"`` (``‖w‖``).
        groups: groups of the generator's 1×1 convolution B.

    Example:
        >>> dau = CoDAConv2d(6, 16, kernel_size=3, rank=32)   # 9L-S-CoDA-SQ's first layer
        >>> dau(torch.rand(2, 6, 32, 32)).shape
        torch.Size([2, 16, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t = 3,
        stride: _size_2_t = 1,
        padding: _size_2_t | None = None,
        *,
        rank: int,
        norm: DAUNorm = "squash",
        groups: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if norm not in DAU_NORMS:
            raise ValueError(f"norm must be one of {', '.join(DAU_NORMS)}, got {norm!r}")
        if rank < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"rank, in_channels and out_channels must be positive, got {rank}, {in_channels} and {out_channels}"
            )
        self.in_channels, self.out_channels, self.rank, self.norm = in_channels, out_channels, rank, norm
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding = tuple((k - 1) // 2 for k in self.kernel_size) if padding is None else _pair(padding)
        self.weight_mod = DAUWeights(in_channels, out_channels, self.kernel_size, self.stride, self.padding, rank,
                                     groups, device=device, dtype=dtype)  # fmt: skip
        self._cache = FilterCache()  # the QR factor T, in eval mode

    def forward(self, x: Tensor) -> Tensor:
        h = self.weight_mod.low_rank(x)  # [N, R, H', W']
        factors = self.weight_mod.factors()  # [D, P, R+1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
            scale = self._inverse_norm(h, factors)  # [N, D, H', W']
        if self.detach:  # w(x) = M [h; 1] is a constant: only the patch x_p carries the gradient
            h, factors = h.detach(), factors.detach()
        return self._numerator(x, h, factors) * scale

    def _numerator(self, x: Tensor, h: Tensor, factors: Tensor) -> Tensor:
        """``w_j(x)·x_p = [h; 1]·(M_jᵀ x_p)``: one convolution of x with ``D·(R+1)`` filters, ``[N, D, H', W']``."""
        d, _, r1 = factors.shape
        filters = factors.transpose(1, 2).reshape(d * r1, self.in_channels, *self.kernel_size)
        projected = F.conv2d(x, filters, None, self.stride, self.padding).unflatten(1, (d, r1))  # [N, D, R+1, H', W']
        h1 = F.pad(h, (0, 0, 0, 0, 0, 1), value=1.0)  # [h; 1], so no slice of the large tensor (nor its backward)
        return (projected * h1.unsqueeze(1)).sum(2)

    def _inverse_norm(self, h: Tensor, factors: Tensor) -> Tensor:
        """``1 / norm(w_j(x))`` from ``‖w_j‖ = ‖T_j [h; 1]‖`` (``M_j = Q_j T_j``): ``[N, D, H', W']``.

        Q is computed without gradient and ``T_j = Q_jᵀ M_j`` with it: since ``Q_j Q_jᵀ M_j = M_j``, the
        gradient of ``‖Q_jᵀ M_j [h; 1]‖`` with Q held constant is that of ``‖M_j [h; 1]‖``, exactly, and
        nothing is divided by the triangular factor (as differentiating the QR would do, which is
        ill-conditioned when M_j is)."""
        triangular = self._triangular_factor(factors)
        d, m, _ = triangular.shape
        rotated = F.conv2d(h, triangular[..., :-1].reshape(d * m, -1, 1, 1), triangular[..., -1].reshape(d * m))
        norm = torch.linalg.vector_norm(rotated.unflatten(1, (d, m)), dim=2)  # ‖w_j‖, one fused op and backward
        return norm / (1 + norm * norm) if self.norm == "squash" else norm.reciprocal()

    def _triangular_factor(self, factors: Tensor) -> Tensor:
        """``T_j = Q_jᵀ M_j`` (``[D, m, R+1]``, m = min(P, R+1)) with Q from a QR of ``M_j``, held constant:
        the gradient of T is then exact without differentiating the QR.

        T depends on the weights only: in eval mode without weight gradients it is cached (see
        :class:`~bcos_zoo.layers.fastpath.FilterCache`; single-image inference of the rank-256 ImageNet-100
        net is then mostly convolutions). Traced for ONNX, which has no QR, the cached T of an earlier eager
        forward becomes a constant of the graph (``bcos_zoo.export_onnx`` runs that forward first)."""
        conv_b = self.weight_mod.weighting_f[1]
        sources = (conv_b.weight, conv_b.bias)  # M = [B, b]
        if torch.jit.is_tracing():
            cached = self._cache.peek(sources)
            if cached is None:
                raise RuntimeError(
                    "tracing a CoDA-Net for ONNX needs its QR factors computed first (ONNX has no QR): "
                    "run the model once in eval mode under torch.no_grad() before exporting, or use bcos_zoo.export_onnx"
                )
            return cached

        def compute() -> Tensor:
            with torch.no_grad():
                basis = torch.linalg.qr(factors).Q  # [D, P, m]
            return basis.mT @ factors

        if not self.training and weights_frozen(*sources):
            return self._cache.get(sources, compute)
        return compute()

    def extra_repr(self) -> str:
        groups = self.weight_mod.weighting_f[1].groups
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}, rank={self.rank}, norm={self.norm!r}"
        return s + (f", groups={groups}" if groups > 1 else "")
