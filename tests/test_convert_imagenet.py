"""ImageNet class names for predict: 1000 names, and Google's 1001-logit layout via label_offset."""

from __future__ import annotations

from mobilenet_v1.imagenet import BACKGROUND, imagenet_classes, imagenet_labels, label_of


def test_thousand_unique_names_in_the_standard_order():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    # synset order: n01440764 tench first, n15075141 toilet tissue last; the classes the tests predict
    assert (names[0], names[285], names[967], names[999]) == ("tench", "Egyptian cat", "espresso", "toilet tissue")


def test_head_sizes_map_to_names_and_offsets():
    assert imagenet_labels(1000) == (imagenet_classes(), 0)
    assert imagenet_labels(1001) == (imagenet_classes(), 1)
    assert imagenet_labels(10) == (None, 0)


def test_label_of_a_1001_class_logit():
    names = imagenet_classes()
    assert label_of(0, names, 1) == BACKGROUND
    assert label_of(286, names, 1) == "Egyptian cat"  # Google's logit 286 is ImageNet class 285
    assert label_of(285, names, 0) == "Egyptian cat"
    assert label_of(3, None) == "#3"
