"""SAM / MobileSAM export with randomly initialised models of the exact architectures
(no SAM weights exist here): checkpoint files in the real format, ONNX vs torch, and the
batched decoder against SAM's own prompt encoder + mask decoder."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from segvlad_edge.engines.manifest import load_manifest
from segvlad_edge.export import build_engines, sam


@pytest.fixture(scope="module", params=["vit_t", "vit_b"])
def sam_engines(request, tmp_path_factory):
    torch.manual_seed(0)
    model = sam.build_sam(request.param)
    tmp = tmp_path_factory.mktemp(request.param)
    ckpt = tmp / f"{request.param}.pth"
    torch.save(model.state_dict(), ckpt)
    res = build_engines.build_engines({"sizes": [(28, 28)], "sam": str(ckpt)}, tmp)
    enc = next(m for m, _ in res if m.kind == "sam_encoder")
    dec = next(m for m, _ in res if m.kind == "sam_decoder")
    return request.param, model, load_manifest(enc.path), load_manifest(dec.path)


def test_manifests_and_encoder_parity(sam_engines):
    arch, model, enc, dec = sam_engines
    assert enc.model["arch"] == arch and enc.source["sha256"] == dec.source["sha256"]
    assert enc.verification["max_abs_diff"] < 1e-2
    x = np.random.default_rng(3).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    got = ort.InferenceSession(str(enc.engine_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        ref = model.image_encoder(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 256, 64, 64)
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())


def test_batched_decoder_matches_sam(sam_engines):
    arch, model, _, dec = sam_engines
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((1, 256, 64, 64), dtype=np.float32)
    pts = rng.uniform(0, 1024, (7, 2)).astype(np.float32)
    sess = ort.InferenceSession(str(dec.engine_path), providers=["CPUExecutionProvider"])
    logits, iou = sess.run(["low_res_logits", "iou"], {"image_embeddings": emb, "point_coords": pts})
    assert logits.shape == (7, 3, 256, 256) and iou.shape == (7, 3)
    with torch.no_grad():   # SAM's own path: prompt encoder (with its padding point) + mask decoder
        sparse, dense = model.prompt_encoder(points=(torch.from_numpy(pts)[:, None], torch.ones(7, 1)),
                                             boxes=None, masks=None)
        ref_masks, ref_iou = model.mask_decoder(torch.from_numpy(emb), model.prompt_encoder.get_dense_pe(),
                                                sparse, dense, multimask_output=True)
    np.testing.assert_allclose(logits, ref_masks.numpy(), atol=2e-3 * max(1, np.abs(ref_masks.numpy()).max()))
    np.testing.assert_allclose(iou, ref_iou.numpy(), atol=1e-3)
    single = np.concatenate([sess.run(["low_res_logits"], {"image_embeddings": emb, "point_coords": p[None]})[0]
                             for p in pts])
    np.testing.assert_allclose(single, logits, atol=1e-3)


def test_not_a_sam_checkpoint(tmp_path):
    torch.save({"foo": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(sam.SamSourceError, match="not a SAM"):
        sam.load_sam(tmp_path / "x.pt")


def test_sam_segmenter_on_the_engines(sam_engines):
    """Segment-everything through the exported engines, masks pooled onto a patch grid."""
    from segvlad_edge.runtime.backends import open_engine
    from segvlad_edge.runtime.steps.features import FeatureMap
    from segvlad_edge.runtime.steps.segmenters.sam import SamSegmenter, mask_nms

    arch, _, enc, dec = sam_engines
    if arch != "vit_t":
        pytest.skip("one architecture is enough for the segmenter")
    seg = SamSegmenter(open_engine(enc), open_engine(dec), enc.model["mean"], enc.model["std"], points=4, batch=5,
                       iou_thresh=-1e9, stability_thresh=0.0, nms_thresh=1.0)
    img = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    logits, scores, valid = seg.low_res_masks(img)
    assert logits.shape == (16 * 3, 256, 256) and scores.shape == (48,)
    assert valid == (int(np.ceil(614 / 4)), 256)          # 120x200 -> 614x1024 inside the 1024 frame
    masks = seg(img, FeatureMap(np.zeros((6 * 10, 8), np.float32), (6, 10)))
    assert masks.dtype == bool and masks.shape[1] == 60 and len(masks) >= 1
    dup = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(mask_nms(dup, 0.7), dup[[0, 2]])
