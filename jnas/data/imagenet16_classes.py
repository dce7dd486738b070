"""The 120 classes of ImageNet16-120 as WordNet IDs, and the map from a TFDS label list onto them.

ImageNet16-120 (NAS-Bench-201) keeps the images of downsampled ImageNet (Chrabaszcz, Loshchilov and Hutter,
arXiv 1707.08819) whose label is in [1, 120] and subtracts 1 (AutoDL-Projects
`xautodl/datasets/DownsampledImageNet.py`: `if 1 <= L <= use_num_of_class_only`, then `targets[index] - 1`).
The downsampled-ImageNet labels number the classes in the order of the ILSVRC devkit's `map_clsloc.txt`
(PatrykChrabaszcz/Imagenet32_Scripts `utils.py`: `get_label_dict()` reads "n02119789 1 kit_fox", ...), so
class k of ImageNet16-120 is line k + 1 of `map_clsloc.txt`. `WNIDS` lists those 120 lines' WordNet IDs.

Where the list comes from and how it was checked:
- Copied from the first 120 lines of `tensorflow_datasets/image_classification/imagenet_resized_labels.txt`
  (tensorflow-datasets 4.9.10). The README of TFDS's `imagenet_resized` (datasets/imagenet_resized/README.md)
  states that its integer labels are the downsampled-ImageNet authors' labels (map_clsloc.txt) made 0-based,
  and its builder yields `label - 1` from the original files and names the labels with that file.
- The first three entries equal the first lines of `map_clsloc.txt` as quoted in many public repositories
  ("n02119789 1 kit_fox", "n02100735 2 English_setter", "n02110185 3 Siberian_husky").
- The same TFDS file follows map_clsloc order further on: Imagenet32_Scripts `utils.py` gives the labels
  490, 361, 171 for ILSVRC2012_val_00000001..3, and TFDS's `imagenet2012/validation_labels.txt` names those
  images n01751748, n09193705, n02105855, which are lines 490, 361 and 171 of the TFDS file.
- The 120 IDs are distinct (tests/test_data_more.py checks this and the agreement with the installed TFDS).

The TFDS `imagenet2012` builder numbers the same 1000 classes differently (sorted WordNet IDs: kit fox is
278 there, 0 here), which is why the map below goes through WordNet IDs rather than integers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

WNIDS: tuple[str, ...] = (
    "n02119789", "n02100735", "n02110185", "n02096294", "n02102040", "n02066245", "n02509815", "n02124075",  # 0
    "n02417914", "n02123394", "n02125311", "n02423022", "n02346627", "n02077923", "n02110063", "n02447366",  # 8
    "n02109047", "n02089867", "n02102177", "n02091134", "n02092002", "n02071294", "n02442845", "n02504458",  # 16
    "n02092339", "n02098105", "n02096437", "n02114712", "n02105641", "n02128925", "n02091635", "n02088466",  # 24
    "n02096051", "n02117135", "n02138441", "n02097130", "n02493509", "n02457408", "n02389026", "n02443484",  # 32
    "n02110341", "n02089078", "n02086910", "n02445715", "n02093256", "n02113978", "n02106382", "n02441942",  # 40
    "n02113712", "n02113186", "n02105162", "n02415577", "n02356798", "n02488702", "n02123159", "n02098413",  # 48
    "n02422699", "n02114855", "n02094433", "n02111277", "n02132136", "n02119022", "n02091467", "n02106550",  # 56
    "n02422106", "n02091831", "n02120505", "n02104365", "n02086079", "n02112706", "n02098286", "n02095889",  # 64
    "n02484975", "n02137549", "n02500267", "n02129604", "n02090721", "n02396427", "n02108000", "n02391049",  # 72
    "n02412080", "n02108915", "n02480495", "n02110806", "n02128385", "n02107683", "n02085936", "n02094114",  # 80
    "n02087046", "n02100583", "n02096177", "n02494079", "n02105056", "n02101556", "n02123597", "n02481823",  # 88
    "n02105505", "n02088094", "n02085782", "n02489166", "n02364673", "n02114548", "n02134084", "n02480855",  # 96
    "n02090622", "n02113624", "n02093859", "n02403003", "n02097298", "n02108551", "n02493793", "n02107142",  # 104
    "n02096585", "n02107574", "n02107908", "n02086240", "n02102973", "n02112018", "n02093647", "n02397096",  # 112
)

NUM_CLASSES = len(WNIDS)


def label_map(label_names: Sequence[str], classes: Sequence[str] = WNIDS) -> np.ndarray:
    """int32 array: entry i is the class (index into `classes`, by default the ImageNet16-120 classes) of
    the dataset label named `label_names[i]`, or -1 for a label outside them.

    `label_names` are the WordNet IDs a dataset gives its integer labels, e.g. a TFDS builder's
    `info.features["label"].names`. For TFDS `imagenet_resized` this is the identity on 0..119; for an
    ImageNet in sorted-WordNet-ID order (TFDS `imagenet2012`) it picks 120 of its 1000 labels and permutes
    them. Raises ValueError when some of `classes` are not among the names: then the names are not ImageNet
    WordNet IDs, and no image of those classes could be found.
    """
    index = {wnid: k for k, wnid in enumerate(classes)}
    table = np.asarray([index.get(str(name), -1) for name in label_names], np.int32)
    missing = sorted(set(classes) - {str(name) for name in label_names})
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(classes)} classes ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}) are not among the dataset's {len(label_names)} label "
            "names; the labels must be named by ImageNet WordNet IDs (n0xxxxxxx) to be mapped")
    return table
