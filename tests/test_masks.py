import numpy as np
import pytest
from pycocotools import mask as cocomask

from dmn_data.errors import SkipItem
from dmn_data.masks import decode_rle, rle_bbox, segmentation_to_rle
from dmn_data.records import RleMask


def _reference_union(polys, h, w):
    """What pycocotools' decoding of the source annotation gives (annToMask), as a union."""
    return cocomask.decode(cocomask.frPyObjects(polys, h, w)).max(axis=2)


def test_polygon_union_is_pixel_identical_and_binary():
    h, w = 40, 50
    polys = [[2, 2, 30, 2, 30, 30, 2, 30], [10, 10, 45, 10, 45, 35, 10, 35]]  # overlapping parts
    rle = segmentation_to_rle(polys, h, w)
    assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
    m = decode_rle(rle)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    np.testing.assert_array_equal(m, _reference_union(polys, h, w))


def test_rle_inputs_compressed_and_uncompressed():
    h, w = 20, 30
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:20] = 1
    comp = cocomask.encode(np.asfortranarray(m))
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle({"size": [h, w], "counts": comp["counts"].decode()}, h, w)), m)
    # uncompressed: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle({"size": [h, w], "counts": runs}, h, w)), m)
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle(RleMask((h, w), comp["counts"].decode()), h, w)), m)
    assert rle_bbox(segmentation_to_rle(RleMask((h, w), comp["counts"].decode()), h, w)) == (4.0, 3.0, 16.0, 6.0)


def test_degenerate_and_empty_are_skipped():
    with pytest.raises(SkipItem) as e:
        segmentation_to_rle([[1, 1, 5, 5]], 10, 10)
    assert e.value.reason == "degenerate_polygon"
    with pytest.raises(SkipItem) as e:
        segmentation_to_rle([[1, 1, 1, 1, 1, 1]], 10, 10)
    assert e.value.reason == "empty_mask"
    with pytest.raises(SkipItem) as e:
        segmentation_to_rle([], 10, 10)
    assert e.value.reason == "empty_mask"
    with pytest.raises(SkipItem) as e:
        segmentation_to_rle({"size": [5, 5], "counts": [25]}, 10, 10)
    assert e.value.reason == "mask_size_mismatch"


def test_degenerate_part_next_to_good_one_is_dropped():
    h, w = 20, 20
    good = [2, 2, 15, 2, 15, 15]
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle([good, [1, 2, 3]], h, w)), _reference_union([good], h, w))
