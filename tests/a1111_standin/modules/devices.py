"""Mirrors modules/devices.py: `device`, the torch device the WebUI runs its model on (set at
start-up from --device-id, --use-cpu, MPS...; here the CPU)."""
import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu


# Mirrors devices.manual_cast (v1.10.1), which devices.autocast() returns on MPS, XPU, GTX 16xx
# and for FP8 weights with fp32 inference: while active, the forward of every module of these
# classes casts its tensor arguments and *the module itself* to the target dtype, runs, and
# casts the module back to the dtype of its first parameter of another dtype.
patch_module_list = [torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention,
                     torch.nn.GroupNorm, torch.nn.LayerNorm]


def _cast_forward(target_dtype):
    def forward(self, *args, **kwargs):
        args = [a.to(target_dtype) if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: v.to(target_dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        original = next((p.dtype for p in self.parameters() if p.dtype != target_dtype), target_dtype)
        self.to(target_dtype)
        try:
            return self.org_forward(*args, **kwargs)
        finally:
            self.to(original)
    return forward


@contextlib.contextmanager
def manual_cast(target_dtype):
    for cls in patch_module_list:
        cls.org_forward, cls.forward = cls.forward, _cast_forward(target_dtype)
    try:
        yield
    finally:
        for cls in patch_module_list:
            cls.forward = cls.org_forward
            del cls.org_forward
