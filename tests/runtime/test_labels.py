import numpy as np
import pytest

from kidedge.runtime.labels import logits_to_labels

SOFTMAX4 = {"activation": "softmax", "labels": [0, 1, 2, 3]}


def test_softmax_argmax_mapped_through_labels(rng):
    logits = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = logits_to_labels(logits, {"activation": "softmax", "labels": [0, 2, 1]}, (8, 8), (8, 8))
    expect = np.array([0, 2, 1], np.uint8)[logits.argmax(1)]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expect)


def test_ties_go_to_the_lower_channel():
    logits = np.zeros((1, 4, 2, 2), np.float32)
    assert not logits_to_labels(logits, SOFTMAX4, (2, 2), (2, 2)).any()


def test_padding_is_cut_before_resizing():
    # content 4x4 in a padded 8x8; the padding says "tumour" and must not leak in
    logits = np.zeros((1, 4, 8, 8), np.float32)
    logits[0, 1, :4, :4] = 5.0
    logits[0, 2, 4:, :] = 50.0
    logits[0, 2, :, 4:] = 50.0
    out = logits_to_labels(logits, SOFTMAX4, (4, 4), (16, 16))
    assert out.shape == (1, 16, 16)
    assert (out == 1).all()


def test_resize_back_to_scan_grid_is_linear_on_logits():
    # a left/right split at low resolution becomes the same split at 4x resolution
    logits = np.zeros((2, 2, 4, 4), np.float32)
    logits[:, 1, :, 2:] = 1.0
    logits[:, 1, :, :2] = -1.0
    out = logits_to_labels(logits, {"activation": "softmax", "labels": [0, 1]}, (4, 4), (16, 16))
    assert (out[:, :, :8] == 0).all() and (out[:, :, 8:] == 1).all()


def test_sigmoid_channels_paint_in_order():
    logits = np.full((1, 3, 2, 2), -5.0, np.float32)
    logits[0, 0] = 5.0            # kidney+masses everywhere
    logits[0, 1, 0, :] = 5.0      # masses in the top row
    logits[0, 2, 0, 0] = 5.0      # tumour top-left
    out = logits_to_labels(logits, {"activation": "sigmoid", "labels": [1, 3, 2]}, (2, 2), (2, 2))
    np.testing.assert_array_equal(out[0], [[2, 3], [1, 1]])


def test_channel_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="channels"):
        logits_to_labels(np.zeros((1, 3, 2, 2), np.float32), SOFTMAX4, (2, 2), (2, 2))


def _resample_every_channel(logits, values, content, target):
    """The plain definition: resample all K channels of every slice, then arg-max."""
    from kidedge.preprocess import resize_linear

    z = logits[:, :, :content[0], :content[1]]
    return np.stack([np.asarray(values, np.uint8)[resize_linear(np.ascontiguousarray(s), target).argmax(0)]
                     for s in z])


@pytest.mark.parametrize(("content", "target"), [((30, 46), (47, 73)), ((30, 46), (30, 46)),
                                                 ((30, 46), (12, 20)), ((30, 46), (61, 19)), ((1, 5), (3, 9))])
def test_border_only_resampling_equals_resampling_every_channel(rng, content, target):
    # smooth logits (class regions with borders, as a segmenter gives) in a padded grid
    from scipy import ndimage

    raw = rng.normal(size=(3, 4, 32, 48)).astype(np.float32)
    logits = np.ascontiguousarray(ndimage.gaussian_filter(raw, (0, 0, 2, 2)) * 20)
    values = [0, 2, 3, 1]
    out = np.full((3, *target), 9, np.uint8)
    got = logits_to_labels(logits, {"activation": "softmax", "labels": values}, content, target, out=out)
    assert got is out
    np.testing.assert_array_equal(got, _resample_every_channel(logits, values, content, target))
