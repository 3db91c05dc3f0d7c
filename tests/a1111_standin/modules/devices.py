"""Mirrors modules/devices.py: `device`, the torch device the WebUI runs its model on (set at
start-up from --device-id, --use-cpu, MPS...; here the CPU)."""
import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu


# Mirrors devices.manual_cast (v1.10.1), which devices.autocast() returns on MPS, XPU, GTX 16xx
# and for FP8 weights with fp32 inference: while active, the forward of every module of these
# classes casts its tensor arguments (when a positional one has another dtype) and *the module
# itself* to the target dtype (MultiheadAttention: fp32), runs, and casts the module back to the
# dtype of its first parameter of another dtype; classes already patched are left alone (nested
# use). Left out: casting the result to dtype_inference, which differs only for FP8 weights.
patch_module_list = [torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention,
                     torch.nn.GroupNorm, torch.nn.LayerNorm]


def _cast_forward(target_dtype):
    def forward(self, *args, **kwargs):
        if any(isinstance(a, torch.Tensor) and a.dtype != target_dtype for a in args):
            args = [a.to(target_dtype) if isinstance(a, torch.Tensor) else a for a in args]
            kwargs = {k: v.to(target_dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        original = next((p.dtype for p in self.parameters() if p.dtype != target_dtype), target_dtype)
        if original != target_dtype:
            self.to(target_dtype)
        result = self.org_forward(*args, **kwargs)
        if original != target_dtype:
            self.to(original)
        return result
    return forward


@contextlib.contextmanager
def manual_cast(target_dtype):
    applied = False
    for cls in patch_module_list:
        if hasattr(cls, "org_forward"):
            continue
        applied = True
        cls.org_forward = cls.forward
        cls.forward = _cast_forward(torch.float32 if cls is torch.nn.MultiheadAttention else target_dtype)
    try:
        yield
    finally:
        if applied:
            for cls in patch_module_list:
                if hasattr(cls, "org_forward"):
                    cls.forward = cls.org_forward
                    del cls.org_forward
