"""Tests for modgap_jax.models: tower shapes, EOT pooling, causal mask, attention pooling
against a float64 NumPy reference, BatchNorm sync under pmap, bf16 mode, config errors.

Models are tiny so that every test compiles in seconds on CPU; RN50 is checked with
``jax.eval_shape`` only.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgap_jax import models
from modgap_jax.errors import ConfigError
from modgap_jax.models.text import MlpBlock

NU_INIT = float(np.log(1 / 0.07))


def _key(seed):
  # RBG keys: on CPU, XLA compiles a model's init several times faster than with threefry,
  # and these tests only need some random parameters, not a particular stream.
  return jax.random.key(seed, impl='rbg')


def _images(key, n, size, channels=3):
  return jax.random.normal(key, (n, size, size, channels), jnp.float32)


def _tokens(key, n, length, vocab):
  """Random captions: ids in [1, vocab-1), EOT (= vocab-1, the largest id), then 0-padding."""
  k1, k2 = jax.random.split(key)
  ids = jax.random.randint(k1, (n, length), 1, vocab - 1)
  eot = jax.random.randint(k2, (n,), 1, length)
  pos = jnp.arange(length)[None]
  return jnp.where(pos < eot[:, None], ids, jnp.where(pos == eot[:, None], vocab - 1, 0)).astype(jnp.int32)


@pytest.fixture(scope='module')
def tiny_clip():
  """The default (tiny ResNet + text) CLIP, its variables and one batch of inputs."""
  cfg = models.default_model_config()
  model = models.create_model(cfg, NU_INIT)
  images = _images(jax.random.key(1), 3, cfg.image_size)
  tokens = _tokens(jax.random.key(2), 3, cfg.context_length, cfg.vocab_size)
  variables = jax.jit(model.init)(_key(0), images, tokens)
  outputs = jax.jit(model.apply)(variables, images, tokens)
  return cfg, model, variables, images, tokens, outputs


# ----------------------------------------------------------------------------- two-tower model


def test_clip_param_tree_and_temperature(tiny_clip):
  _, _, variables, _, _, _ = tiny_clip
  params = variables['params']
  assert set(params) == {'image', 'text', 'temperature'}
  nu = params['temperature']['nu']
  assert nu.shape == () and nu.dtype == jnp.float32
  np.testing.assert_allclose(nu, NU_INIT, rtol=1e-7)
  # GroupNorm (the default) keeps no batch statistics.
  assert set(variables) == {'params'}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_clip_embeddings_are_unit_norm_and_methods_agree(tiny_clip):
  cfg, model, variables, images, tokens, (image_emb, text_emb) = tiny_clip
  for emb in (image_emb, text_emb):
    assert emb.shape == (3, cfg.embed_dim) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb, np.float64), axis=-1), 1.0, atol=1e-6)

  @jax.jit
  def encode(v):
    return (
      model.apply(v, images, method=models.CLIP.encode_image),
      model.apply(v, tokens, method=models.CLIP.encode_text),
    )

  enc_image, enc_text = encode(variables)
  np.testing.assert_allclose(enc_image, image_emb, atol=1e-6)
  np.testing.assert_allclose(enc_text, text_emb, atol=1e-6)


def test_bf16_mode_outputs_float32_and_matches_float32(tiny_clip):
  cfg, _, variables, images, tokens, (image32, text32) = tiny_clip
  cfg16 = cfg.copy_and_resolve_references()
  cfg16.dtype = 'bfloat16'
  model16 = models.create_model(cfg16, NU_INIT)
  is_block = lambda mdl, _: isinstance(mdl, (models.Bottleneck, MlpBlock))

  @jax.jit
  def run(v):
    return model16.apply(v, images, tokens, capture_intermediates=is_block, mutable=['intermediates'])

  (image16, text16), state = run(variables)
  assert image16.dtype == jnp.float32 and text16.dtype == jnp.float32
  inner = state['intermediates']
  assert inner['image']['stage1_block0']['__call__'][0].dtype == jnp.bfloat16
  assert inner['text']['transformer']['block0']['mlp']['__call__'][0].dtype == jnp.bfloat16
  # bf16 keeps ~3 significant digits; unit vectors should agree to a few hundredths.
  np.testing.assert_allclose(image16, image32, atol=3e-2)
  np.testing.assert_allclose(text16, text32, atol=3e-2)


# ----------------------------------------------------------------------------- image towers


def test_rn50_shapes_with_eval_shape():
  cfg = models.rn50_config()
  model = models.create_model(cfg, NU_INIT)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((2, 77), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  image_emb, text_emb = jax.eval_shape(model.apply, variables, images, tokens)
  assert image_emb.shape == text_emb.shape == (2, 1024)
  image_params = variables['params']['image']
  # 224 px → 7x7 map → 49 + 1 tokens of 2048 channels.
  assert image_params['attnpool']['positional_embedding'].shape == (50, 2048)
  assert 'batch_stats' in variables
  # CLIP RN50's published size: 102,007,137 parameters = visual 38,316,896 + text 63,690,240
  # + the logit scale.
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  assert count(image_params) == 38_316_896
  assert count(variables['params']['text']) == 63_690_240


def test_attention_pool_matches_numpy_float64():
  n, h, c, heads, out_dim = 2, 2, 8, 2, 6
  pool = models.AttentionPool2d(num_tokens=h * h + 1, heads=heads, output_dim=out_dim)
  x = jax.random.normal(jax.random.key(3), (n, h, h, c))
  params = jax.jit(pool.init)(_key(4), x)['params']
  # Non-zero biases, so the reference checks them too.
  rng = np.random.default_rng(5)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), params)
  got = jax.jit(pool.apply)({'params': params}, x)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  a = p['attn']
  xs = np.asarray(x, np.float64).reshape(n, h * h, c)
  tok = np.concatenate([xs.mean(axis=1, keepdims=True), xs], axis=1) + p['positional_embedding']
  hd = c // heads
  q = tok[:, :1] @ a['query']['kernel'].reshape(c, c) + a['query']['bias'].reshape(c)
  k = tok @ a['key']['kernel'].reshape(c, c) + a['key']['bias'].reshape(c)
  v = tok @ a['value']['kernel'].reshape(c, c) + a['value']['bias'].reshape(c)
  heads_out = []
  for i in range(heads):
    sl = slice(i * hd, (i + 1) * hd)
    logits = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / np.sqrt(hd)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    heads_out.append(w @ v[:, :, sl])
  ref = np.concatenate(heads_out, -1)[:, 0] @ a['out']['kernel'].reshape(c, out_dim) + a['out']['bias']
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_resnet_batchnorm_under_pmap_matches_one_device():
  """Synced BatchNorm over 4 devices = one device on the concatenated batch (8x8 inputs)."""
  assert jax.local_device_count() == 4
  kwargs = dict(layers=(1, 1), output_dim=8, heads=2, image_size=8, width=8, norm='batch')
  synced = models.ModifiedResNet(axis_name='batch', **kwargs)
  single = models.ModifiedResNet(axis_name=None, **kwargs)
  images = _images(jax.random.key(6), 8, 8, channels=1)
  variables = jax.jit(single.init)(_key(7), images)

  def train_fwd(module, v, x):
    return module.apply(v, x, train=True, mutable=['batch_stats'])

  out1, state1 = jax.jit(functools.partial(train_fwd, single))(variables, images)
  replicated = jax.tree.map(lambda a: jnp.broadcast_to(a, (4,) + a.shape), variables)
  outp, statep = jax.pmap(functools.partial(train_fwd, synced), axis_name='batch')(
    replicated, images.reshape(4, 2, 8, 8, 1)
  )
  assert out1.shape == (8, 8)
  np.testing.assert_allclose(outp.reshape(8, 8), out1, rtol=1e-4, atol=1e-5)
  for leaf_p, leaf_1, leaf_0 in zip(
    jax.tree.leaves(statep), jax.tree.leaves(state1), jax.tree.leaves(variables['batch_stats'])
  ):
    for d in range(4):
      np.testing.assert_allclose(leaf_p[d], leaf_1, rtol=1e-4, atol=1e-6)
    assert not np.allclose(leaf_1, leaf_0)  # The statistics did move.


def test_vit_output_shape_smoke():
  vit = models.VisionTransformer(image_size=16, patch_size=8, width=32, depth=1, heads=4, output_dim=16)
  x = _images(jax.random.key(8), 2, 16)
  variables = jax.jit(vit.init)(_key(9), x)
  params = variables['params']
  assert params['positional_embedding'].shape == (1 + 4, 32)
  assert params['class_embedding'].shape == (32,)
  assert set(params) >= {'patch_embedding', 'ln_pre', 'transformer', 'ln_post', 'projection'}
  out = jax.jit(vit.apply)(variables, x)
  assert out.shape == (2, 16) and bool(jnp.all(jnp.isfinite(out)))


# ----------------------------------------------------------------------------- text tower


@pytest.fixture(scope='module')
def text_tower():
  vocab, length = 50, 8
  tower = models.TextTransformer(vocab_size=vocab, context_length=length, width=32, depth=2, heads=4, output_dim=16)
  tokens = _tokens(jax.random.key(10), 2, length, vocab)
  variables = jax.jit(tower.init)(_key(11), tokens)

  @jax.jit
  def run(tok):
    out, state = tower.apply(variables, tok, mutable=['intermediates'])
    return out, state['intermediates']['token_features'][0]

  return vocab, variables, run


def test_text_features_taken_at_eot(text_tower):
  vocab, variables, run = text_tower
  eot_pos = 4
  base = np.array([[5, 9, 3, 7, vocab - 1, 0, 0, 0]], np.int32)
  after_eot = base.copy()
  after_eot[0, 5:] = [11, 12, 13]  # Changes after EOT: no effect on the pooled feature.
  before_eot = base.copy()
  before_eot[0, 2] = 4  # A change before EOT: changes it.
  out, feats = run(jnp.asarray(np.concatenate([base, after_eot, before_eot])))
  np.testing.assert_allclose(out[1], out[0], atol=1e-6)
  assert np.max(np.abs(out[2] - out[0])) > 1e-3
  # The pooled output is exactly the projected final-LN feature at the EOT position.
  proj = variables['params']['projection']['kernel']
  np.testing.assert_allclose(out[0], feats[0, eot_pos] @ proj, rtol=1e-5, atol=1e-6)


def test_text_causal_mask(text_tower):
  vocab, _, run = text_tower
  base = np.array([[5, 9, 3, 7, 8, 2, 6, vocab - 1]], np.int32)
  variants = [base]
  for p in range(1, 8):
    changed = base.copy()
    changed[0, p] = 1 + (changed[0, p] % (vocab - 2))  # Any other non-EOT id.
    variants.append(changed)
  _, feats = run(jnp.asarray(np.concatenate(variants)))
  for p in range(1, 8):
    np.testing.assert_allclose(feats[p, :p], feats[0, :p], atol=1e-6)
    assert np.max(np.abs(feats[p, p] - feats[0, p])) > 1e-3


# ----------------------------------------------------------------------------- configs


def test_tiny_resnet_at_8px_through_factory():
  cfg = models.default_model_config()
  cfg.image_size = 8
  cfg.resnet.layers = (1, 1)
  cfg.resnet.norm = 'batch'
  model = models.create_model(cfg, NU_INIT)
  images = jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32)
  tokens = jax.ShapeDtypeStruct((4, cfg.context_length), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  assert variables['params']['image']['attnpool']['positional_embedding'].shape == (2, 16 * 2 * 4)
  image_emb, _ = jax.eval_shape(model.apply, variables, images, tokens)
  assert image_emb.shape == (4, cfg.embed_dim)


def _set(cfg, dotted, value):
  *parents, leaf = dotted.split('.')
  for name in parents:
    cfg = cfg[name]
  cfg[leaf] = value


@pytest.mark.parametrize(
  'field, value',
  [
    ('image_tower', 'cnn'),
    ('dtype', 'float16'),
    ('embed_dim', 0),
    ('resnet.norm', 'layer'),
    ('resnet.width', 15),
    ('resnet.heads', 7),
    ('resnet.layers', ()),
    ('image_size', 16),  # Too small for 4 stages.
    ('text.heads', 5),
    ('vocab_size', -1),
  ],
)
def test_invalid_config_raises_config_error(field, value):
  cfg = models.default_model_config()
  _set(cfg, field, value)
  for check in (models.check_model_config, functools.partial(models.create_model, nu_init=NU_INIT)):
    with pytest.raises(ConfigError) as info:
      check(cfg)
    message = str(info.value)
    assert '\n' not in message
    name = 'image_size' if field == 'image_size' else field.split('.')[-1]
    assert name in message


def test_invalid_vit_config_raises_config_error():
  cfg = models.default_model_config()
  cfg.image_tower = 'vit'
  cfg.vit.patch_size = 5
  with pytest.raises(ConfigError, match='patch_size'):
    models.create_model(cfg, NU_INIT)
  cfg.vit.patch_size = 8
  assert isinstance(models.create_model(cfg, NU_INIT).image, models.VisionTransformer)


def test_wrong_image_size_at_call_raises():
  model = models.create_model(models.default_model_config(), NU_INIT)
  with pytest.raises(ConfigError, match='image_size'):
    jax.eval_shape(
      model.init,
      jax.random.key(0),
      jax.ShapeDtypeStruct((1, 48, 48, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 32), jnp.int32),
    )


# ----------------------------------------------------------------------------- float64 references


def _np_conv(x, kernel, stride):
  """Brute-force NHWC/HWIO convolution with symmetric zero padding k // 2, in float64."""
  k = kernel.shape[0]
  pad = k // 2
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
  for a in range(out_h):
    for b in range(out_w):
      window = x[:, a * stride : a * stride + k, b * stride : b * stride + k]  # [n, k, k, c]
      out[:, a, b] = np.einsum('nijc,ijco->no', window, kernel)
  return out


@pytest.mark.parametrize(
  'side, kernel, stride',
  [(8, 1, 1), (8, 3, 1), (2, 3, 1), (1, 3, 1), (8, 3, 2), (7, 3, 2)],
  ids=['1x1 (dot)', '3x3', '3x3 on 2x2 (tap sum)', '3x3 on 1x1 (tap sum)', '3x3 stride 2', '3x3 stride 2 odd'],
)
def test_conv2d_matches_numpy_float64(side, kernel, stride):
  conv = models.resnet.Conv2d(features=5, kernel_size=kernel, strides=stride)
  x = _images(jax.random.key(20), 2, side, channels=4)
  variables = jax.jit(conv.init)(_key(21), x)
  assert variables['params']['kernel'].shape == (kernel, kernel, 4, 5)  # nn.Conv's name and shape
  got = jax.jit(conv.apply)(variables, x)
  ref = _np_conv(np.asarray(x, np.float64), np.asarray(variables['params']['kernel'], np.float64), stride)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [8, 64], ids=['one channel per group', 'two channels per group'])
def test_group_norm_matches_numpy_float64_and_keeps_flax_param_paths(channels):
  norm = models.resnet.make_norm('group', train=True, axis_name=None, dtype=jnp.float32, name='norm')
  x = 3.0 * _images(jax.random.key(23), 3, 5, channels=channels) + 1.5  # off-centre, so μ matters
  variables = jax.jit(norm.init)(_key(24), x)
  # The paths flax.linen.GroupNorm gave, so checkpoints written before still restore.
  assert jax.tree.map(jnp.shape, variables) == {'params': {'group_norm': {'scale': (channels,), 'bias': (channels,)}}}
  variables = {'params': _perturbed(variables['params'], 25)}
  got = jax.jit(norm.apply)(variables, x)
  groups = math.gcd(32, channels)
  xs = np.asarray(x, np.float64).reshape(3, 5, 5, groups, channels // groups)
  mu = xs.mean(axis=(1, 2, 4), keepdims=True)
  var = ((xs - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params']['group_norm'])
  ref = ((xs - mu) / np.sqrt(var + 1e-5)).reshape(x.shape) * p['scale'] + p['bias']
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _np_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']


def _np_transformer(x, params, heads, causal):
  """The pre-LN Transformer of models/text.py on every row, in float64."""
  n, length, width = x.shape
  hd = width // heads
  allowed = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
  for name in sorted(params, key=lambda s: int(s.removeprefix('block'))):
    p = params[name]
    a = p['attn']
    y = _np_layer_norm(x, p['ln_1'])
    q, k, v = (
      y @ a[m]['kernel'].reshape(width, width) + a[m]['bias'].reshape(width) for m in ('query', 'key', 'value')
    )
    out = []
    for h in range(heads):
      sl = slice(h * hd, (h + 1) * hd)
      logits = np.where(allowed, q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(hd), -np.inf)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out.append(w / w.sum(-1, keepdims=True) @ v[..., sl])
    x = x + np.concatenate(out, -1) @ a['out']['kernel'].reshape(width, width) + a['out']['bias']
    y = _np_layer_norm(x, p['ln_2']) @ p['mlp']['fc']['kernel'] + p['mlp']['fc']['bias']
    y = y / (1 + np.exp(-1.702 * y))
    x = x + y @ p['mlp']['proj']['kernel'] + p['mlp']['proj']['bias']
  return x


def _perturbed(params, seed):
  """Parameters plus noise, so that zero-initialised biases are checked too."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), params)


def test_text_tower_matches_numpy_float64_and_its_full_sequence_path():
  vocab, length, width = 50, 8, 32
  tower = models.TextTransformer(vocab, length, width, depth=2, heads=4, output_dim=16)
  tokens = _tokens(jax.random.key(22), 5, length, vocab)
  params = _perturbed(jax.jit(tower.init)(_key(23), tokens)['params'], 24)

  def pooled(p):  # The training path: the last block computes the EOT row only.
    return tower.apply({'params': p}, tokens)

  def full(p):  # Asking for the token features runs every block on every row.
    return tower.apply({'params': p}, tokens, mutable=['intermediates'])[0]

  got, got_full = jax.jit(pooled)(params), jax.jit(full)(params)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tok = np.asarray(tokens)
  x = p['token_embedding']['embedding'][tok] + p['positional_embedding'][:length]
  x = _np_layer_norm(_np_transformer(x, p['transformer'], 4, causal=True), p['ln_final'])
  ref = x[np.arange(len(tok)), tok.argmax(-1)] @ p['projection']['kernel']
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_full, ref, rtol=1e-5, atol=1e-5)

  # Same gradients as the full-sequence computation: the rows the last block skips do not
  # reach the output.
  def loss(fn):
    return jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(fn(q)))))

  grads, grads_full = jax.tree.leaves(loss(pooled)(params)), jax.tree.leaves(loss(full)(params))
  scale = max(float(np.max(np.abs(g))) for g in grads_full)  # Key biases' gradients are 0 up to rounding.
  for g, g_full in zip(grads, grads_full):
    np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-6 * scale)


def test_vit_matches_numpy_float64():
  size, patch, width = 16, 8, 32
  vit = models.VisionTransformer(image_size=size, patch_size=patch, width=width, depth=2, heads=4, output_dim=16)
  x = _images(jax.random.key(25), 3, size)
  params = _perturbed(jax.jit(vit.init)(_key(26), x)['params'], 27)
  got = jax.jit(vit.apply)({'params': params}, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  img = np.asarray(x, np.float64)
  g = size // patch
  patches = img.reshape(3, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, g * g, -1)
  tokens = patches @ p['patch_embedding']['kernel'].reshape(-1, width)
  cls = np.broadcast_to(p['class_embedding'], (3, 1, width))
  seq = _np_layer_norm(np.concatenate([cls, tokens], 1) + p['positional_embedding'], p['ln_pre'])
  seq = _np_transformer(seq, p['transformer'], 4, causal=False)
  ref = _np_layer_norm(seq[:, 0], p['ln_post']) @ p['projection']['kernel']
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
