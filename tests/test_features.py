"""Feature extractors: shapes, freezing, MS-CaiT wiring, pretrained loading from a local file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uflow_lib.features import _create, build_extractor


def test_mcait_wiring_with_reduced_depth():
    # random weights and 2 blocks each: checks shapes, the 224 branch and the normalisation, not the weights
    torch.manual_seed(0)
    ext = build_extractor("mcait", pretrained=False, cait_blocks=(2, 2))
    assert len(ext.fine.blocks) == 2 and ext.fine.blocks_token_only is None
    x = torch.rand(1, 3, 448, 448)
    fine, coarse = ext(x)
    assert fine.shape == (1, 768, 28, 28) and coarse.shape == (1, 384, 14, 14)
    assert ext.channels == [768, 384] and ext.feature_sizes(448) == [28, 14]
    # coarse scale = CaiT-S24 tokens of the bicubic 224 resize of the *normalised* image
    xn = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x224 = F.interpolate(xn, size=(224, 224), mode="bicubic", align_corners=True)
    with torch.no_grad():
        tokens = ext.coarse.norm(ext.coarse.blocks(ext.coarse.patch_embed(x224) + ext.coarse.pos_embed))
    torch.testing.assert_close(coarse, tokens.transpose(1, 2).reshape(1, 384, 14, 14))
    with pytest.raises(ValueError, match="448"):
        ext(torch.rand(1, 3, 256, 256))


@pytest.mark.parametrize("name,channels,strides", [("resnet18", [64, 128, 256], [4, 8, 16]),
                                                   ("mobilenetv2", [32, 96], [8, 16])])
def test_cnn_shapes_and_frozen(name, channels, strides):
    ext = build_extractor(name, pretrained=False)
    ext.train()  # must stay in eval mode
    assert not ext.training and all(not p.requires_grad for p in ext.parameters())
    feats = ext(torch.rand(2, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(2, c, 256 // s, 256 // s) for c, s in zip(channels, strides)]
    assert ext.channels == channels and ext.strides == strides


def test_pretrained_loading_from_local_file(mobilenet_weights):
    ext = build_extractor("mobilenetv2", weights=mobilenet_weights)
    state = torch.load(mobilenet_weights, map_location="cpu")
    torch.testing.assert_close(ext.model.conv_stem.weight, state["conv_stem.weight"])
    torch.testing.assert_close(ext.mean.flatten(), torch.full((3,), 0.5))  # the file's convention (README)


def test_offline_weights_classify_a_cat(mobilenet_weights):
    # the same loading path, with the classifier: scikit-image's 'chelsea', centre-cropped, is a tiger cat (282)
    from skimage import data

    model = _create("mobilenetv2_100", True, mobilenet_weights, ((0.5,) * 3, (0.5,) * 3), pad_type="same").eval()
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 300, 451)
    h, w = img.shape[-2:]
    img = img[..., :, (w - h) // 2 : (w - h) // 2 + h]  # centre square (1, 3, 300, 300)
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = model((img - 0.5) / 0.5).argmax(1).item()
    assert top == 282


def test_missing_weights_file_and_unknown_backbone():
    with pytest.raises(FileNotFoundError, match="not found"):
        build_extractor("mobilenetv2", weights="no/such/file.pth")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_extractor("vgg")


def test_wrong_image_shape_is_explained():
    ext = build_extractor("resnet18", pretrained=False)
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        ext(torch.rand(1, 1, 64, 64))


def test_out_indices_choose_the_stages_and_are_checked():
    ext = build_extractor("mobilenetv2", pretrained=False, out_indices=(1, 2, 3))
    assert (ext.channels, ext.strides) == ([24, 32, 96], [4, 8, 16])
    for bad in ((3, 2), (2, 5), ()):
        with pytest.raises(ValueError, match="out_indices"):
            build_extractor("mobilenetv2", pretrained=False, out_indices=bad)
    with pytest.raises(ValueError, match="CNN backbones only"):
        build_extractor("mcait", pretrained=False, out_indices=(1,))
