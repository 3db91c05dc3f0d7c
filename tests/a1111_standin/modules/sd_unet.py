"""Mirrors modules/sd_unet.py: the "SD Unet" setting (a TensorRT engine, for one) puts an SdUnet
in `current_unet`, and UNetModel.forward, patched by modules/sd_hijack_unet.py at import with
create_unet_forward, then runs it instead of the UNet's own modules. (The stand-in patches
nothing at import; a test installs the patch for its own duration.)"""
import torch.nn

current_unet = None


class SdUnet(torch.nn.Module):
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError()

    def activate(self):
        pass

    def deactivate(self):
        pass


def create_unet_forward(original_forward):
    def UNetModel_forward(self, x, timesteps=None, context=None, *args, **kwargs):
        if current_unet is not None:
            return current_unet.forward(x, timesteps, context, *args, **kwargs)

        return original_forward(self, x, timesteps, context, *args, **kwargs)

    return UNetModel_forward
