"""Tests of the datasets read from the user's files (coco_raw, image_text_folder) and of
CLIP's random-resized crop in the streamed training pipeline.

Each test writes its own tiny COCO root or caption folder (solid-colour images made with
Pillow, whose colour encodes the image) and builds it into a temporary data_dir.
"""

import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import modgap_jax.data as data
from modgap_jax.data import examples, pipeline, registry
from modgap_jax.errors import ConfigError

# COCO-shaped root: image id -> (folder, (height, width)); captions per id (7 has none).
_COCO_IMAGES = {
  1: ("train2017", (30, 40)),
  2: ("train2017", (40, 30)),
  3: ("train2017", (24, 24)),
  4: ("train2017", (20, 50)),
  7: ("train2017", (20, 20)),
  10: ("val2017", (30, 36)),
  11: ("val2017", (32, 32)),
  12: ("val2017", (18, 27)),
}
_NUM_CAPTIONS = {1: 5, 2: 6, 3: 5, 4: 5, 10: 5, 11: 7, 12: 5}
_KARPATHY = {1: "train", 3: "train", 2: "test", 10: "test", 11: "val", 4: "restval", 12: "restval"}


def _colour(key: int) -> tuple[int, int, int]:
  return (37 * key % 256, 200 - 11 * key % 200, 90 + 5 * key % 160)


def _solid(path, shape, colour, fmt=None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full(shape + (3,), colour, dtype=np.uint8)).save(path, format=fmt)


def _write_coco(root, karpathy_in_root: bool = False) -> None:
  """Annotations listed out of id order, to check that captions keep annotation-id order."""
  for folder in ("train2017", "val2017"):
    ids = [i for i, (f, _) in _COCO_IMAGES.items() if f == folder]
    images = [
      {"id": i, "file_name": f"{i:012d}.jpg", "height": _COCO_IMAGES[i][1][0], "width": _COCO_IMAGES[i][1][1]}
      for i in ids
    ]
    annotations = [
      {"id": 1000 * i + j, "image_id": i, "caption": f"image {i}  caption {j}"}
      for i in ids
      for j in range(_NUM_CAPTIONS.get(i, 0))
    ]
    os.makedirs(root / "annotations", exist_ok=True)
    with open(root / "annotations" / f"captions_{folder}.json", "w") as f:
      json.dump({"images": images, "annotations": annotations[::-1]}, f)
    for i in ids:
      _solid(str(root / folder / f"{i:012d}.jpg"), _COCO_IMAGES[i][1], _colour(i), "JPEG")
  if karpathy_in_root:
    _write_karpathy(root / "dataset_coco.json")


def _write_karpathy(path) -> None:
  entries = [
    {"cocoid": i, "split": s, "filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "sentences": []}
    for i, s in _KARPATHY.items()
  ]
  with open(path, "w") as f:
    json.dump({"images": entries, "dataset": "coco"}, f)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco")
  _write_coco(root)
  return root


def _ids_and_captions(split):
  return [int(c[0].split()[1]) for c in split.captions()], split.captions()


def _check_colours(split, ids, store_size):
  for image, i in zip(split.originals(np.arange(len(split))), ids):
    h, w = _COCO_IMAGES[i][1] if i in _COCO_IMAGES else image.shape[:2]
    assert min(image.shape[:2]) == min(store_size, h, w)
    assert abs(image.shape[0] / image.shape[1] - h / w) < 0.1  # Aspect kept.
    assert np.abs(image.reshape(-1, 3).mean(0) - _colour(i)).max() < 4  # JPEG, solid colour.


def test_coco_raw_train_val_from_the_files(coco_root, tmp_path):
  kwargs = dict(path=str(coco_root), store_size=16)
  train = data.load_examples("coco_raw", "train", tmp_path, **kwargs)
  val = data.load_examples("coco_raw", "val", tmp_path, in_memory=True, **kwargs)
  assert isinstance(train, examples.LazyExamples)  # COCO is read per batch by default.
  train_ids, train_captions = _ids_and_captions(train)
  assert train_ids == [1, 2, 3, 4]  # Image 7 has no caption; increasing id.
  assert _ids_and_captions(val)[0] == [10, 11, 12]
  for i, captions in zip(train_ids, train_captions):
    assert captions == [f"image {i} caption {j}" for j in range(_NUM_CAPTIONS[i])]  # All, in id order.
  assert [len(c) for c in val.captions()] == [5, 7, 5]
  _check_colours(train, train_ids, 16)
  _check_colours(val, [10, 11, 12], 16)
  assert train.labels() == {} and val.labels() == {}
  with pytest.raises(ConfigError, match="Karpathy"):
    data.load("coco_raw", "test", tmp_path, **kwargs)


def test_coco_raw_karpathy_split(coco_root, tmp_path):
  karpathy = tmp_path / "karpathy" / "dataset_coco.json"
  karpathy.parent.mkdir()
  _write_karpathy(karpathy)
  kwargs = dict(path=str(coco_root), store_size=0, karpathy_split=str(karpathy))
  for split in ("train", "restval", "val", "test"):
    ids = _ids_and_captions(data.load_examples("coco_raw", split, tmp_path, **kwargs))[0]
    assert ids == sorted(i for i, s in _KARPATHY.items() if s == split)
  test = data.load_examples("coco_raw", "test", tmp_path, **kwargs)
  assert test.captions()[0] == [f"image 2 caption {j}" for j in range(6)]  # The 2017 annotations' captions.
  _check_colours(test, [2, 10], 10**6)  # store_size 0: as they are.
  union = data.load_examples("coco_raw", "train+restval", tmp_path, **kwargs)
  assert len(union) == 4


def test_coco_raw_finds_karpathy_in_the_root(tmp_path):
  root = tmp_path / "coco"
  _write_coco(root, karpathy_in_root=True)
  assert len(data.load("coco_raw", "test", tmp_path / "cache", path=str(root), store_size=8)) == 2


def test_coco_raw_evaluates_on_karpathy_test_when_found_else_val(coco_root, tmp_path, capsys):
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config().dataset
  config.name, config.path, config.store_size = "coco_raw", str(coco_root), 8
  assert config.eval_split == ""  # The dataset's own choice.
  said = []
  assert registry.resolve_eval_split(config, say=said.append) == "val"
  assert len(said) == 1 and "'val'" in said[0] and "dataset_coco.json" in said[0] and str(coco_root) in said[0]
  # load() takes the same split for '', and says so on stderr once however often it is asked.
  cache = tmp_path / "cache"
  for _ in range(2):
    assert _ids_and_captions(data.load_examples("coco_raw", "", cache, **data.file_options(config)))[0] == [10, 11, 12]
  assert capsys.readouterr().err.count("coco_raw: evaluating on 'val' (val2017)") == 1
  # With Karpathy's file: his 'test'.
  karpathy = tmp_path / "dataset_coco.json"
  _write_karpathy(karpathy)
  config.karpathy_split = str(karpathy)
  assert registry.resolve_eval_split(config, say=said.append) == "test"
  assert len(said) == 2 and "Karpathy's 'test'" in said[1] and str(karpathy) in said[1]
  # A named split is the user's: kept as it is, and one the files lack is still an error.
  config.karpathy_split, config.eval_split = "", "test"
  assert registry.resolve_eval_split(config, say=said.append) == "test" and len(said) == 2
  message = _one_line_error("split='test'", data.load, "coco_raw", "test", cache, **data.file_options(config))
  assert "it has 'train', 'val'" in message
  # Every other dataset evaluates on 'test', which needs no words.
  assert registry.default_eval_split("digits_captions") == ("test", "")
  assert registry.resolve_eval_split({"name": "twemoji_captions", "eval_split": ""}, say=said.append) == "test"
  assert len(said) == 2


def test_builds_are_keyed_by_path_and_options(coco_root, tmp_path):
  def name(**kwargs):
    return registry.builder("coco_raw", tmp_path, **{"path": str(coco_root), **kwargs}).builder_config.name

  other = tmp_path / "coco2"
  _write_coco(other)
  assert name() == name() == name(path=str(coco_root) + "/.")  # Resolved path.
  assert len({name(), name(store_size=64), name(path=str(other))}) == 3
  built = registry.prepare("coco_raw", tmp_path, path=str(other), store_size=8)
  assert built.data_dir.startswith(os.path.join(str(tmp_path), "coco_raw", name(path=str(other), store_size=8)))


def _write_folder(root, lines, images) -> None:
  for relative, (shape, colour) in images.items():
    _solid(str(root / relative), shape, colour)
  with open(root / "captions.jsonl", "w") as f:
    f.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_image_text_folder_with_splits_and_labels(tmp_path):
  root = tmp_path / "pets"
  images = {
    "cats/a.png": ((12, 16), (200, 10, 10)),
    "dogs/b.png": ((16, 12), (10, 200, 10)),
    "cats/c.jpg": ((10, 10), (10, 10, 200)),
    "d.png": ((8, 20), (120, 120, 0)),
  }
  lines = [
    {"image": "cats/a.png", "caption": "a cat", "split": "train", "label": "cat"},
    {"image": "dogs/b.png", "caption": "a dog", "split": "train", "label": "dog"},
    {"image": "cats/a.png", "caption": "the  same cat", "split": "train", "label": "cat"},
    "",
    {"image": "cats/c.jpg", "caption": "a blue cat", "split": "test", "label": "cat"},
    {"image": "d.png", "caption": "a bird", "split": "test", "label": "bird"},
  ]
  _write_folder(root, lines, images)
  train = data.load_examples("image_text_folder", "train", tmp_path / "cache", path=str(root), store_size=10)
  test = data.load_examples("image_text_folder", "test", tmp_path / "cache", path=str(root), store_size=10)
  assert isinstance(train, examples.InMemoryExamples)
  assert train.captions() == [["a cat", "the same cat"], ["a dog"]]
  assert test.captions() == [["a blue cat"], ["a bird"]]
  assert train.class_names == {"label": ("bird", "cat", "dog")}  # Sorted label strings.
  assert train.labels()["label"].tolist() == [1, 2] and test.labels()["label"].tolist() == [1, 0]
  classnames, templates = data.zero_shot_classes("image_text_folder", "label", split=test)
  assert classnames == ["bird", "cat", "dog"] and all("{}" in t for t in templates)
  shapes = [im.shape for im in train.originals([0, 1])]
  assert shapes == [(10, 13, 3), (13, 10, 3)]  # Short side 10, aspect kept.
  assert np.abs(train.originals([1])[0].reshape(-1, 3).mean(0) - (10, 200, 10)).max() < 4
  with pytest.raises(ConfigError, match="split='val'"):
    data.load("image_text_folder", "val", tmp_path / "cache", path=str(root), store_size=10)


def _hash_side(image: str, seed: int, fraction: float) -> str:
  """The documented rule, recomputed: SHA-256 of 'image_text_folder/<seed>:<image>', 8 bytes big-endian."""
  digest = hashlib.sha256(f"image_text_folder/{seed}:{image}".encode()).digest()
  return "test" if int.from_bytes(digest[:8], "big") / 2.0**64 < fraction else "train"


def test_image_text_folder_seeded_fraction_without_labels(tmp_path):
  root = tmp_path / "plain"
  names = [f"img{i:02d}.png" for i in range(30)]
  _write_folder(
    root,
    [{"image": n, "caption": f"picture {n}"} for n in names],
    {n: ((6, 6), (8 * i, 0, 0)) for i, n in enumerate(names)},
  )
  for seed, fraction in ((0, 0.3), (5, 0.5)):
    kwargs = dict(path=str(root), store_size=0, test_fraction=fraction, split_seed=seed)
    got = {}
    for split in ("train", "test"):
      part = data.load_examples("image_text_folder", split, tmp_path / "cache", **kwargs)
      got.update({caps[0].split()[1]: split for caps in part.captions()})
      assert part.labels() == {} and part.class_names == {}  # No labels: zero-shot stays off.
    assert got == {n: _hash_side(n, seed, fraction) for n in names}
    assert 0 < list(got.values()).count("test") < len(names)


def _one_line_error(match, fn, *args, **kwargs) -> str:
  with pytest.raises(ConfigError, match=match) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_bad_inputs_give_one_line_config_errors(tmp_path):
  cache = tmp_path / "cache"
  load = registry.load
  # COCO: a missing annotations file, a missing image, a Karpathy id the annotations lack.
  coco = tmp_path / "coco"
  _write_coco(coco)
  os.remove(coco / "annotations" / "captions_val2017.json")
  _one_line_error(r"captions_val2017\.json", load, "coco_raw", "train", cache, path=str(coco))
  _write_coco(coco)
  os.remove(coco / "train2017" / f"{3:012d}.jpg")
  _one_line_error(r"000000000003\.jpg' is missing", load, "coco_raw", "train", cache, path=str(coco))
  _write_coco(coco)
  karpathy = tmp_path / "k.json"
  _write_karpathy(karpathy)
  with open(karpathy) as f:
    table = json.load(f)
  table["images"].append({"cocoid": 99, "split": "test"})
  with open(karpathy, "w") as f:
    json.dump(table, f)
  _one_line_error("cocoid=99", load, "coco_raw", "test", cache, path=str(coco), karpathy_split=str(karpathy))
  _one_line_error("dataset.path is empty", load, "coco_raw", "train", cache)
  _one_line_error("not a folder", load, "coco_raw", "train", cache, path=str(tmp_path / "nowhere"))
  # Caption folders.
  folder = tmp_path / "folder"
  folder.mkdir()
  images = {"a.png": ((4, 4), (1, 2, 3))}
  good = {"image": "a.png", "caption": "a"}
  _one_line_error(r"captions\.jsonl.*missing", load, "image_text_folder", "train", cache, path=str(folder))
  cases = [
    ([good, "{not json"], r"captions\.jsonl' line 2 is not valid JSON"),
    ([good, {"image": "a.png"}], r"line 2: field 'caption' is missing"),
    ([good, {"image": "b.png", "caption": "b"}], r"image file=.*b\.png' is missing"),
    ([{**good, "label": "x"}, {**good, "label": "y"}], r"line 2: field 'label'='y' differs"),
    ([{**good, "label": "x"}, {"image": "a.png", "caption": "b"}], r"line 2: field 'label' is given on some"),
    ([{**good, "split": "dev"}], r"line 1: field 'split'='dev' is not valid"),
    ([{**good, "image": "../a.png"}], r"line 1: field 'image'='../a.png' must be a path inside"),
  ]
  for lines, match in cases:
    _write_folder(folder, lines, images)
    _one_line_error(match, load, "image_text_folder", "train", cache, path=str(folder), test_fraction=0.01)
  with open(folder / "a.png", "wb") as f:
    f.write(b"not a png")
  _write_folder(folder, [good], {})
  _one_line_error(
    r"a\.png' cannot be read", load, "image_text_folder", "train", cache, path=str(folder), test_fraction=0.01
  )
  _one_line_error("dataset.path is only used by", load, "digits_captions", "train", cache, path=str(folder))
  _one_line_error("dataset.store_size", load, "image_text_folder", "train", cache, path=str(folder), store_size=-1)


def test_file_options_from_the_default_config():
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  assert data.file_options(config.dataset) == {}  # twemoji: nothing extra.
  config.dataset.name, config.dataset.path = "image_text_folder", "/data/pets"
  assert data.file_options(config.dataset) == dict(
    path="/data/pets", store_size=256, karpathy_split="", test_fraction=0.1, split_seed=0
  )


# ------------------------------------------------------------------ random-resized crop


def _reference_crop(image, seed, step, slot, scale, ratio, size):
  """MATH: area share ~ U(scale), log aspect ~ U(log ratio), 10 tries, else centre; PIL crop + bicubic."""
  rng = np.random.default_rng([seed, step, slot, 2])
  height, width = image.shape[:2]
  box = None
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 1 <= w <= width and 1 <= h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      box = (int(left), int(top), int(left) + w, int(top) + h)
      break
  assert box is not None  # These scales always fit within 10 tries.
  resized = Image.fromarray(image).crop(box).resize((size, size), Image.BICUBIC)
  return np.asarray(resized), box


def test_random_resized_crop_matches_a_reference():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  crop = data.random_resized_crop((0.3, 0.9), (0.5, 2.0))
  widths = []
  for step, slot in [(0, 0), (0, 1), (3, 2), (1000, 7)]:
    want, (left, top, right, bottom) = _reference_crop(image, 11, step, slot, crop.scale, crop.ratio, 24)
    got = pipeline.crop_images([image], 11, step, [slot], crop, 24)[0]
    np.testing.assert_array_equal(got, want)
    share = (right - left) * (bottom - top) / (37 * 53)
    assert 0.25 < share < 0.95 and 0.45 < (right - left) / (bottom - top) < 2.2
    widths.append(right - left)
  assert len(set(widths)) > 1  # Different (step, slot): different crops.
  # A box that never fits falls back to the centre crop at the clamped aspect ratio.
  assert pipeline.crop_box(np.random.default_rng(0), 40, 4, data.random_resized_crop((1.0, 1.0), (1.0, 1.0))) == (
    18,
    0,
    4,
    4,
  )
  with pytest.raises(ConfigError, match="crop_scale"):
    data.random_resized_crop((0.0, 1.0))
  with pytest.raises(ConfigError, match="crop_ratio"):
    data.random_resized_crop((0.5, 1.0), (2.0, 1.0))
  assert data.random_resized_crop(()) is None and data.random_resized_crop(None) is None


def test_streamed_batches_crop_per_slot_resume_and_match_grain():
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8) for i in range(8)]
  split = examples.InMemoryExamples(images, [[f"image {i}"] for i in range(8)])
  stream = data.TrainStream(
    global_batch_size=4,
    num_devices=2,
    image_size=12,
    context_length=8,
    seed=3,
    crop_scale=(0.5, 1.0),
    crop_ratio=(0.75, 4 / 3),
  )
  reference = [b["image"] for b, _ in zip(data.train_batches(split, stream), range(4))]
  plain = next(data.train_batches(split, dataclasses.replace(stream, crop_scale=None)))["image"]
  assert not np.allclose(plain, reference[0])  # Default: centre crops, unchanged.
  for step, batch in enumerate(reference):
    indices, _ = pipeline._StepPlan(split.tokens(pipeline._BYTES, 8)[1], 8, 4, 3, 0, 1)(step)  # pylint: disable=protected-access
    want = [
      _reference_crop(images[i], 3, step, slot, (0.5, 1.0), (0.75, 4 / 3), 12)[0] for slot, i in enumerate(indices)
    ]
    np.testing.assert_allclose(batch.reshape(4, 12, 12, 3), data.normalize(np.stack(want)), atol=1e-6)
  resumed = next(data.train_batches(split, stream, start_step=2))["image"]
  np.testing.assert_array_equal(resumed, reference[2])
  grained = data.grain_train_batches(split, stream, start_step=1, num_workers=0)
  for step in (1, 2, 3):
    np.testing.assert_array_equal(next(grained)["image"], reference[step])
  halves = [
    next(data.train_batches(split, dataclasses.replace(stream, num_devices=1, process_index=p, process_count=2)))
    for p in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate([h["image"][0] for h in halves]), reference[0].reshape(4, 12, 12, 3))
