import cv2
import numpy as np
import pytest

from segvlad_edge.runtime.images import ImageError, list_images, load_image


def test_good_and_bad_files(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "ok.png"), img)
    cv2.imwrite(str(tmp_path / "grey.png"), img[..., 0])
    cv2.imwrite(str(tmp_path / "deep.png"), (img.astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([img, img[..., :1]]))
    (tmp_path / "ünï cödé name.png").write_bytes((tmp_path / "ok.png").read_bytes())
    for name in ("ok.png", "grey.png", "deep.png", "rgba.png", "ünï cödé name.png"):
        out = load_image(tmp_path / name)
        assert out.shape == (30, 40, 3) and out.dtype == np.uint8, name
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name, why in (("empty.jpg", "empty"), ("text.jpg", "not a readable image"), ("missing.jpg", "cannot read")):
        with pytest.raises(ImageError, match=why):
            load_image(tmp_path / name)
    names = [p.name for p in list_images(tmp_path)]
    assert names == sorted(names) and "ok.png" in names and "text.jpg" in names


def test_symlink_loop_does_not_hang(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in list_images(tmp_path)] == ["x.png"]
