"""The video UNet made by inflate computes the image UNet's function, frame by frame."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import TINY_UNET
from vldm.nn.inflate import inflate, load_image_weights, temporal_parameter_names
from vldm.nn.unet import UNet


def randomised_image_unet(**overrides) -> UNet:
    unet = UNet(**{**TINY_UNET, **overrides})
    with torch.no_grad():  # move every weight off its (partly zero) init so the test can fail
        for p in unet.parameters():
            p.normal_(0.0, 0.05)
    return unet.eval()


def randomise_temporal(video: UNet) -> None:
    """Stand-in for training: move every temporal weight off its identity initialisation."""
    with torch.no_grad():
        for name, p in video.named_parameters():
            if name in temporal_parameter_names(video):
                p.normal_(0.0, 0.05)


def inputs(b: int = 2, t: int = 4, c: int = 4):
    return torch.randn(b * t, c, 8, 8), torch.randn(b * t), torch.randn(b * t, 3, 24)


def test_forward_shapes_for_image_and_video() -> None:
    x, ts, ctx = inputs()
    image = randomised_image_unet()
    assert image(x, ts, ctx).shape == (8, 4, 8, 8)
    video = UNet(**{**TINY_UNET, "video": True}).eval()
    assert video(x, ts, ctx, num_frames=4).shape == (8, 4, 8, 8)


def test_inflated_equals_image_network_per_frame() -> None:
    image = randomised_image_unet()
    video = inflate(image).eval()
    x, ts, ctx = inputs()
    with torch.no_grad():
        diff = (image(x, ts, ctx) - video(x, ts, ctx, num_frames=4)).abs().max().item()
    assert diff <= 1e-5
    assert temporal_parameter_names(video) and not temporal_parameter_names(image)


def test_inflate_to_image_to_video_keeps_identity_with_new_inputs() -> None:
    """Widened input conv (concat latent) and a new vector embedding start at zero."""
    image = randomised_image_unet()
    video = inflate(image, in_channels=8, adm_in_channels=12).eval()
    x, ts, ctx = inputs()
    concat, y = torch.randn_like(x), torch.randn(8, 12)
    with torch.no_grad():
        diff = (image(x, ts, ctx) - video(torch.cat([x, concat], 1), ts, ctx, y=y, num_frames=4)).abs().max()
    assert diff.item() <= 1e-5


def test_temporal_layers_change_output_once_trained() -> None:
    """The identity is an initialisation, not a wiring mistake: moving temporal weights moves the output."""
    image = randomised_image_unet()
    video = inflate(image).eval()
    randomise_temporal(video)
    x, ts, ctx = inputs()
    with torch.no_grad():
        assert (image(x, ts, ctx) - video(x, ts, ctx, num_frames=4)).abs().max().item() > 1e-3


def test_image_only_frames_take_the_spatial_path() -> None:
    """image_only_indicator = 1 forces alpha = 1: trained temporal layers are bypassed for stills."""
    image = randomised_image_unet()
    video = inflate(image).eval()
    randomise_temporal(video)
    x, ts, ctx = inputs()
    indicator = torch.ones(2, 4)
    with torch.no_grad():
        diff = (image(x, ts, ctx) - video(x, ts, ctx, num_frames=4, image_only_indicator=indicator)).abs().max()
    assert diff.item() <= 1e-5


def test_frames_interact_only_through_temporal_layers() -> None:
    """Changing frame 3 changes frame 0's output in the video UNet, never in the image UNet."""
    image = randomised_image_unet()
    video = inflate(image).eval()
    randomise_temporal(video)
    x, ts, ctx = inputs(b=1)
    x2 = x.clone()
    x2[3] += 1.0
    with torch.no_grad():
        assert torch.equal(image(x, ts, ctx)[0], image(x2, ts, ctx)[0])
        assert (video(x, ts, ctx, num_frames=4)[0] - video(x2, ts, ctx, num_frames=4)[0]).abs().max() > 1e-4


def test_load_image_weights_names_mismatched_keys() -> None:
    video = UNet(**{**TINY_UNET, "video": True})
    state = randomised_image_unet().state_dict()
    state["input_blocks.99.weight"] = torch.zeros(1)
    del state["out.2.weight"]
    with pytest.raises(KeyError, match=r"missing \['out.2.weight'\].*unexpected \['input_blocks.99.weight'\]"):
        load_image_weights(video, state)


def test_inflate_rejects_a_video_unet() -> None:
    with pytest.raises(ValueError, match="image UNet"):
        inflate(UNet(**{**TINY_UNET, "video": True}))


def test_gradient_checkpointing_gives_same_gradients() -> None:
    x, ts, ctx = inputs()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        net = UNet(**{**TINY_UNET, "video": True, "gradient_checkpointing": ckpt}).train()
        net(x, ts, ctx, num_frames=4).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
