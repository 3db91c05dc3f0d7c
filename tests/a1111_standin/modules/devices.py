"""Mirrors modules/devices.py: `device`, the torch device the WebUI runs its model on (set at
start-up from --device-id, --use-cpu, MPS...; here the CPU)."""
import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu
