"""The catalog: dataset names, their splits and label keys, and ``load``: name -> data source.

``load`` builds a local dataset on first use (offline; a few seconds for twemoji) into
the cache directory of :mod:`paths` and returns ``tfds.data_source``-style random access.
Importing this module imports :mod:`modgap_jax.data.builders`, which registers the builders
with TFDS.

Two datasets are read from the user's files (``FILE_DATASETS``): ``coco_raw`` (a COCO root)
and ``image_text_folder`` (a folder with ``captions.jsonl``). They take ``path`` and the
other :class:`files.FileOptions` fields as keyword arguments; :func:`file_options` picks
them out of a config's ``dataset`` block.

A run evaluates on ``config.dataset.eval_split``; '' (the default) means the dataset's own
choice, :func:`resolve_eval_split`: 'test', except for coco_raw, whose choice depends on its
files and is said in one line on stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Callable

import tensorflow_datasets as tfds

from modgap_jax.data import paths
from modgap_jax.data.builders import coco, coco_raw, digits, fashion_mnist, files, image_text_folder, twemoji
from modgap_jax.errors import ConfigError, check_choice

# Builders defined here, registered with TFDS when this module is imported.
BUILDERS = {
  "twemoji_captions": twemoji.TwemojiCaptions,
  "digits_captions": digits.DigitsCaptions,
  "mnist5k_captions": digits.Mnist5kCaptions,
  "fashion_mnist_local": fashion_mnist.FashionMnistLocal,
  coco_raw.NAME: coco_raw.CocoRaw,
  image_text_folder.NAME: image_text_folder.ImageTextFolder,
}
# Built from the user's files under ``path``, one build per (path, options).
FILE_DATASETS = (coco_raw.NAME, image_text_folder.NAME)
DATASETS = tuple(BUILDERS) + (coco.NAME,)

SPLITS = {name: ("train", "test") for name in BUILDERS}
SPLITS[coco.NAME] = coco.SPLITS
SPLITS[coco_raw.NAME] = coco_raw.SPLITS  # 'test' and 'restval' need Karpathy's file
SPLITS[image_text_folder.NAME] = image_text_folder.SPLITS  # those the lines name, or train/test

# The integer labels each dataset carries, for zero-shot and linear-probe evaluation.
LABEL_KEYS = {
  "twemoji_captions": ("subcategory", "category"),
  "digits_captions": ("label",),
  "mnist5k_captions": ("label",),
  "fashion_mnist_local": ("label",),
  coco.NAME: (),
  coco_raw.NAME: (),
  # Present only when captions.jsonl has labels; see source_label_keys.
  image_text_folder.NAME: (image_text_folder.LABEL_KEY,),
}

_FILE_FIELDS = tuple(f.name for f in dataclasses.fields(files.FileOptions))

# The evaluation split of every dataset whose choice does not depend on its files.
DEFAULT_EVAL_SPLIT = "test"


def label_keys(name: str) -> tuple[str, ...]:
  """The label features dataset ``name`` can have (empty for the COCO datasets)."""
  return LABEL_KEYS[check_choice("dataset", name, DATASETS)]


def source_label_keys(name: str, source) -> tuple[str, ...]:
  """The label features a data source of ``name`` has: an image_text_folder without labels has none."""
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  if features is None:
    return label_keys(name)
  return tuple(k for k in label_keys(name) if k in features)


def file_options(dataset_config) -> dict:
  """The :func:`load` keyword arguments a config's ``dataset`` block holds; {} for the packaged datasets.

  ``data.load_examples(c.name, split, data_dir, **data.file_options(c))`` loads any dataset;
  a field missing from an older config takes its :class:`files.FileOptions` default.
  """
  if dataset_config.get("name") not in FILE_DATASETS:
    return {}
  defaults = files.FileOptions(path="")
  return {f: dataset_config.get(f, getattr(defaults, f)) for f in _FILE_FIELDS}


def check_split(name: str, split: str) -> str:
  """Accepts a split name, optionally with TFDS slicing ('train[:10%]') or '+' unions."""
  for part in str(split).split("+"):
    base = re.sub(r"\[.*\]$", "", part.strip())
    check_choice(f"split (of {name})", base, SPLITS[name])
  return split


@functools.cache
def say_once(line: str) -> None:
  """Prints ``line`` to stderr the first time this process asks (a study loads its data per run)."""
  print(line, file=sys.stderr)


def default_eval_split(name: str, path: str | os.PathLike | None = None, **file_kwargs) -> tuple[str, str]:
  """The split dataset ``name`` evaluates on when none is named, and a line saying why ('' if obvious).

  ``DEFAULT_EVAL_SPLIT`` ('test'), except for coco_raw: Karpathy's 'test' when his file is
  found, else 'val' (:func:`coco_raw.default_eval_split`). ``path`` and ``file_kwargs`` are
  the file options, as for :func:`builder`; ConfigError for a bad one.
  """
  check_choice("dataset", name, DATASETS)
  if name != coco_raw.NAME:
    return DEFAULT_EVAL_SPLIT, ""
  fields = {k: v for k, v in file_kwargs.items() if k in _FILE_FIELDS and k != "path" and v is not None}
  return coco_raw.default_eval_split(files.FileOptions(path=os.fspath(path or ""), **fields))


def resolve_eval_split(dataset_config, *, say: Callable[[str], None] | None = say_once) -> str:
  """The split a run evaluates on: ``dataset_config.eval_split``, or when that is '' the dataset's default.

  Args:
    dataset_config: a config's ``dataset`` block (``name``, ``eval_split``, the file options).
    say: called with the one line that names a default chosen from the files (coco_raw);
      by default printed to stderr once per process; None stays silent.

  Returns:
    A split name for :func:`load`. A named split is returned as it is, so one that the
    dataset lacks still fails in :func:`load` with a line naming the splits it has.
  """
  split = dataset_config.get("eval_split", "")
  if split:
    return split
  split, why = default_eval_split(dataset_config["name"], **file_options(dataset_config))
  if why and say is not None:
    say(why)
  return split


def _file_kwargs(name: str, path, file_kwargs: dict) -> dict:
  """Checks that only the file datasets get a path and file options; returns the builder's kwargs."""
  unknown = sorted(set(file_kwargs) - set(_FILE_FIELDS) - {"num_threads"})
  if unknown:
    raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
  if name not in FILE_DATASETS:
    given = [k for k, v in {"path": path, **file_kwargs}.items() if v not in (None, "")]
    if given:
      raise ConfigError(
        f"dataset.{given[0]} is only used by dataset={' or '.join(map(repr, FILE_DATASETS))}, not {name!r}"
      )
    return {}
  num_threads = file_kwargs.pop("num_threads", None)
  options = files.FileOptions(path=os.fspath(path or ""), **{k: v for k, v in file_kwargs.items() if v is not None})
  return {"config": BUILDERS[name].make_config(options), "num_threads": num_threads}


def builder(
  name: str,
  data_dir: str | os.PathLike | None = None,
  *,
  source_dir: str | os.PathLike | None = None,
  path: str | os.PathLike | None = None,
  **file_kwargs,
) -> tfds.core.DatasetBuilder:
  """Returns the (possibly unprepared) builder of a local dataset.

  Args:
    name: one of the local datasets (``BUILDERS``).
    data_dir: the cache directory; see :func:`paths.resolve_data_dir`.
    source_dir: fashion_mnist_local only: the directory with the four IDX .gz files.
    path: coco_raw and image_text_folder only (required there): the folder they read.
    **file_kwargs: coco_raw and image_text_folder only: the other :class:`files.FileOptions`
      fields (``store_size``, ``karpathy_split``, ``test_fraction``, ``split_seed``; None
      takes the default), and ``num_threads``, the threads that prepare images (default
      one per core).
  """
  check_choice("dataset", name, tuple(BUILDERS))
  kwargs = {"data_dir": os.fspath(paths.resolve_data_dir(data_dir))}
  kwargs.update(_file_kwargs(name, path, dict(file_kwargs)))
  if name == "fashion_mnist_local":
    kwargs["source_dir"] = source_dir
  elif source_dir is not None:
    raise ConfigError(f"source_dir is only used by dataset='fashion_mnist_local', not {name!r}")
  return BUILDERS[name](**kwargs)


def prepare(name: str, data_dir: str | os.PathLike | None = None, **builder_kwargs) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` into ``data_dir`` unless it is there already; returns the builder.

  ``builder_kwargs``: ``source_dir``, ``path`` and the file options, as for :func:`builder`.
  """
  dataset_builder = builder(name, data_dir, **builder_kwargs)
  if not dataset_builder.is_prepared():
    if name == "fashion_mnist_local":
      # Checked here too, so that the error is ours and not wrapped by TFDS.
      fashion_mnist.check_source_dir(dataset_builder._source_dir)  # pylint: disable=protected-access
    dataset_builder.download_and_prepare()
  return dataset_builder


def _check_built_split(name: str, split: str, dataset_builder) -> None:
  """A file dataset has only the splits its files give; name the missing one and the fix."""
  have = tuple(dataset_builder.info.splits)
  for part in str(split).split("+"):
    base = re.sub(r"\[.*\]$", "", part.strip())
    if base not in have:
      hint = {
        coco_raw.NAME: "; 'test' and 'restval' need Karpathy's dataset_coco.json (dataset.karpathy_split)",
        image_text_folder.NAME: "; set 'split' on the lines of captions.jsonl, or raise dataset.test_fraction",
      }
      raise ConfigError(
        f"split={base!r} of dataset={name!r} is empty for dataset.path="
        f"{dataset_builder.builder_config.options.path!r}; it has {', '.join(map(repr, have))}" + hint[name]
      )


def load(
  name: str,
  split: str,
  data_dir: str | os.PathLike | None = None,
  *,
  source_dir: str | os.PathLike | None = None,
  path: str | os.PathLike | None = None,
  **file_kwargs,
):
  """Returns a random-access data source for ``name``/``split``, building it if needed.

  Args:
    name: one of ``DATASETS``.
    split: one of the dataset's ``SPLITS`` (TFDS slicing such as 'train[:10%]' works); ''
      takes its default evaluation split (:func:`default_eval_split`, said once on stderr
      where it depends on the files).
    data_dir: cache directory; default ``$TFDS_DATA_DIR`` or ``~/.cache/modgap_jax/tensorflow_datasets``.
    source_dir: fashion_mnist_local only; see :func:`builder`.
    path, **file_kwargs: coco_raw and image_text_folder only; see :func:`builder`.

  Returns:
    A ``tfds`` data source: ``len(source)``, ``source[i]`` and ``source.__getitems__(ids)``
    give dicts of NumPy values (see each builder's docstring for the features).
  """
  check_choice("dataset", name, DATASETS)
  if not split:
    split, why = default_eval_split(name, path, **file_kwargs)
    if why:
      say_once(why)
  check_split(name, split)
  if name == coco.NAME:
    if source_dir is not None:
      raise ConfigError("source_dir is only used by dataset='fashion_mnist_local', not 'coco_captions'")
    _file_kwargs(name, path, dict(file_kwargs))
    return coco.load(split, paths.resolve_data_dir(data_dir))
  dataset_builder = prepare(name, data_dir, source_dir=source_dir, path=path, **file_kwargs)
  if name in FILE_DATASETS:
    _check_built_split(name, split, dataset_builder)
  return dataset_builder.as_data_source(split=split)
