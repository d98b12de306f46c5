"""When to use VMonarch instead of dense attention: shared by vmonarch.wan and vmonarch.wan_original.

Denoising steps are counted from the timesteps the transformer sees: a forward with a new timestep
value starts the next step (classifier-free guidance's second forward at the same timestep does not),
and a timestep larger than the previous one (timesteps fall during sampling) starts a new generation at
step 0. set_step() overrides the count, e.g. from a pipeline's step callback.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch

from ._args import ITERATIONS, check_bool, check_float, check_int

AttentionFn = Callable[..., torch.Tensor]
_HALF = (torch.bfloat16, torch.float16)


class VMonarchSchedule:
    """Options and run-time state of a VMonarch integration.

    Args:
        iterations, clamp, recompute_first_frame: passed to vmonarch.attention.
        sink_frames: S, the first S latent frames' keys are attended exactly and merged with the Monarch
            part by log-sum-exp (spec §3b); 0 (default) is the paper's method. Passed to the operator only
            when S > 0.
        dense_steps: the first K denoising steps of each generation run dense attention (K = 0: none).
        dense_layers: indices of transformer blocks that always run dense attention.
        attention_fn: replaces vmonarch.attention (same signature, "bshd" layout); for tests and
            experiments, e.g. the executable reference.
        cast_float32_on_cuda: float32 CUDA activations are cast to this dtype for the VMonarch kernels
            (which take bfloat16/float16) and back; None raises the operator's TypeError instead.
        entropy_grad, save_state: the backward options of vmonarch.attention for training (spec §7): the
            exact gradient through the R-step entropy, and keeping the training forward's state instead of
            rerunning the forward inside the backward. Passed to the operator (and to attention_fn) only
            when True; they change nothing without gradients.
    """

    def __init__(self, iterations: int = 2, clamp: float = 0.1, recompute_first_frame: bool = True,
                 dense_steps: int = 0, dense_layers: Iterable[int] = (), attention_fn: Optional[AttentionFn] = None,
                 cast_float32_on_cuda: Optional[torch.dtype] = torch.bfloat16, sink_frames: int = 0,
                 entropy_grad: bool = False, save_state: bool = False):
        fn = "vmonarch.VMonarchSchedule"
        self.entropy_grad = check_bool(fn, "entropy_grad", entropy_grad)
        self.save_state = check_bool(fn, "save_state", save_state)
        self.sink_frames = check_int(fn, "sink_frames", sink_frames, 0, what="an int >= 0 (0: the paper's method)")
        self.iterations = check_int(fn, "iterations", iterations, *ITERATIONS)
        self.clamp = check_float(fn, "clamp", clamp, lo=0.0, what="a finite float >= 0 (0 disables the clamp)")
        self.recompute_first_frame = check_bool(fn, "recompute_first_frame", recompute_first_frame)
        self.dense_steps = check_int(fn, "dense_steps", dense_steps, 0)
        if isinstance(dense_layers, (str, bytes)) or not hasattr(dense_layers, "__iter__"):
            raise TypeError(f"{fn}: argument 'dense_layers' is {dense_layers!r} ({type(dense_layers).__name__}), "
                            "expected an iterable of block indices (ints >= 0)")
        self.dense_layers = frozenset(check_int(fn, "dense_layers", i, 0, what="block indices (ints >= 0)")
                                      for i in dense_layers)
        if attention_fn is not None and not callable(attention_fn):
            raise TypeError(f"{fn}: argument 'attention_fn' is {attention_fn!r} ({type(attention_fn).__name__}), "
                            "expected a callable or None")
        self.attention_fn = attention_fn
        if cast_float32_on_cuda is not None and not isinstance(cast_float32_on_cuda, torch.dtype):
            raise TypeError(f"{fn}: argument 'cast_float32_on_cuda' is {cast_float32_on_cuda!r} "
                            f"({type(cast_float32_on_cuda).__name__}), expected torch.bfloat16, torch.float16 or None")
        if cast_float32_on_cuda is not None and cast_float32_on_cuda not in _HALF:
            raise ValueError(f"{fn}: argument 'cast_float32_on_cuda' is {cast_float32_on_cuda}, expected "
                             "torch.bfloat16, torch.float16 or None (the dtypes of the CUDA kernels)")
        self.cast_float32_on_cuda = cast_float32_on_cuda
        self.grid: Optional[Tuple[int, int, int]] = None
        self.step = 0
        self._last_timestep: Optional[float] = None
        self._warned = set()

    # --- schedule ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start counting denoising steps from 0 again."""
        self.step = 0
        self._last_timestep = None

    def set_step(self, step: int) -> None:
        self.step = check_int("vmonarch.VMonarchSchedule.set_step", "step", step, 0)

    def check_layers(self, fn: str, blocks: int) -> None:
        """Raises ValueError when dense_layers names a block the model does not have."""
        for index in sorted(self.dense_layers):
            if index >= blocks:
                raise ValueError(f"{fn}: argument 'dense_layers' contains {index}, expected block indices "
                                 f"0..{blocks - 1} (the transformer has {blocks} blocks)")

    def observe_timestep(self, timestep) -> None:
        """Advance the step count from a transformer forward's timestep (tensor or number)."""
        if timestep is None:
            return
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() == 0:
                return
            value = float(timestep.detach().max())  # per-token timesteps (Wan 2.2 TI2V): the noisiest
        else:
            value = float(timestep)
        last = self._last_timestep
        if last is None:
            self.step = 0
        elif value > last:
            self.step = 0          # a new generation
        elif value < last:
            self.step += 1
        self._last_timestep = value

    def use_vmonarch(self, layer: Optional[int]) -> bool:
        if self.step < self.dense_steps:
            return False
        return layer is None or layer not in self.dense_layers

    # --- the attention call ----------------------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                  scale: Optional[float] = None) -> torch.Tensor:
        """VMonarch over q, k, v in "bshd" layout; returns q's dtype. attention_fn gets scale= only when given."""
        dtype = q.dtype
        if q.is_cuda and dtype == torch.float32 and self.attention_fn is None and self.cast_float32_on_cuda:
            self.warn_once("cast", f"vmonarch: float32 activations on CUDA are cast to {self.cast_float32_on_cuda} "
                                   "for the VMonarch kernels (which take bfloat16/float16)")
            q, k, v = (x.to(self.cast_float32_on_cuda) for x in (q, k, v))
        options = {"sink_frames": self.sink_frames} if self.sink_frames else {}
        options.update({name: True for name in ("entropy_grad", "save_state") if getattr(self, name)})
        if self.attention_fn is not None:
            extra = {} if scale is None else {"scale": float(scale)}
            out = self.attention_fn(q, k, v, grid=tuple(grid), iterations=self.iterations, clamp=self.clamp,
                                    recompute_first_frame=self.recompute_first_frame, **options, **extra)
        else:
            import vmonarch

            out = vmonarch.attention(q, k, v, grid=tuple(grid), layout="bshd", iterations=self.iterations,
                                     clamp=self.clamp, recompute_first_frame=self.recompute_first_frame,
                                     scale=None if scale is None else float(scale), **options)
        return out.to(dtype)
