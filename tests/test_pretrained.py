"""Tests of modgap_jax.pretrained and CLIP's tokenizer against open_clip, without torch.

tests/fixtures/pretrained/ (made by experiments/make_pretrained_fixture.py with the [bench]
extra) holds tiny randomly initialised open_clip models of each family, as open_clip publishes
weights, with open_clip's own features on fixed inputs, and open_clip's token ids for 299
captions. Our towers must reproduce the features to 1e-5 relative (float32) and the ids exactly.
The tests that need torch, open_clip or the ``safetensors`` package skip without them.
"""

import importlib.util
import json
import os
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from modgap_jax import models, pretrained
from modgap_jax.data import text
from modgap_jax.errors import ConfigError
from modgap_jax.pretrained import files, layout, safetensors_io
from modgap_jax.temperature import Reparam

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'pretrained')
MODELS = ('rn_quickgelu', 'vit_gelu', 'vit_quickgelu')
RTOL = 1e-5
# Parameter counts of CLIP's released models, logit scale included (as CLIP's paper and
# open_clip count them; BatchNorm statistics are buffers, not parameters).
CLIP_PARAMETERS = {
  'RN50': 102_007_137,
  'RN101': 119_688_033,
  'RN50x4': 178_300_601,
  'ViT-B-32': 151_277_313,
  'ViT-B-16': 149_620_737,
  'ViT-L-14': 427_616_513,
}


def _model_dir(name):
  return os.path.join(FIXTURES, name)


def _weights(name):
  return os.path.join(_model_dir(name), 'open_clip_model.safetensors')


def _inputs(expected, preprocess):
  """The fixture's model inputs: pixels / 255, then the mean and std (as the fixture script)."""
  mean = np.asarray(preprocess['mean'], np.float32)
  std = np.asarray(preprocess['std'], np.float32)
  return (expected['pixels'].astype(np.float32) / np.float32(255) - mean) / std


def _features(loaded, images, tokens):
  """Our unnormalised image and text features, and the normalised embeddings."""
  model, variables = loaded.model, loaded.variables
  image = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.image(x)))(variables, images)
  txt = jax.jit(lambda v, t: model.apply(v, t, method=lambda m, t: m.text(t)))(variables, tokens)
  emb = jax.jit(model.apply)(variables, images, tokens)
  return np.asarray(image), np.asarray(txt), tuple(np.asarray(e) for e in emb)


def _row_relative_error(ours, theirs):
  """max over rows of ‖ours − theirs‖ / ‖theirs‖, in float64."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)))


@pytest.fixture(scope='module', params=MODELS)
def fixture_model(request):
  """(name, loaded, expected arrays, our outputs) for each fixture model, loaded from its directory."""
  name = request.param
  expected = dict(np.load(os.path.join(_model_dir(name), 'expected.npz')))
  loaded = pretrained.load(_model_dir(name))
  outputs = _features(loaded, _inputs(expected, loaded.preprocess), expected['tokens'])
  return name, loaded, expected, outputs


# ----------------------------------------------------------------------------- equality with open_clip


def test_features_match_open_clip(fixture_model):
  _, _, expected, (image, txt, _) = fixture_model
  assert _row_relative_error(image, expected['image_features']) <= RTOL
  assert _row_relative_error(txt, expected['text_features']) <= RTOL


def test_normalised_embeddings_match_open_clip(fixture_model):
  _, _, expected, (_, _, (image_emb, text_emb)) = fixture_model
  for ours, theirs in ((image_emb, expected['image_features']), (text_emb, expected['text_features'])):
    reference = theirs.astype(np.float64) / np.linalg.norm(theirs.astype(np.float64), axis=1, keepdims=True)
    assert _row_relative_error(ours, reference) <= RTOL


def test_nu_is_the_logit_scale_and_the_model_is_created_with_it(fixture_model):
  _, loaded, expected, _ = fixture_model
  nu = loaded.variables['params']['temperature']['nu']
  assert np.float32(nu) == expected['logit_scale'] == np.float32(loaded.logit_scale)
  assert loaded.model.nu_init == pytest.approx(float(expected['logit_scale']))


def test_fixture_families_are_the_ones_named():
  """The fixture covers a ResNet, and ViTs with both activations (so every family is compared)."""
  towers = {}
  for name in MODELS:
    cfg, _ = pretrained.to_model_config(_model_dir(name))
    towers[name] = (cfg.image_tower, cfg.quick_gelu)
  assert towers == {'rn_quickgelu': ('resnet', True), 'vit_gelu': ('vit', False), 'vit_quickgelu': ('vit', True)}


def test_other_reparameterisations_keep_beta():
  """ν is written for the run's β(ν): β(ν) = e^s for every reparameterisation, and export inverts it."""
  scale = float(np.load(os.path.join(_model_dir('vit_gelu'), 'expected.npz'))['logit_scale'])
  for reparam in (Reparam('softplus'), Reparam('exp_scaled', 3.0)):
    nu = pretrained.nu_from_logit_scale(scale, reparam)
    assert float(reparam.beta(nu)) == pytest.approx(np.exp(scale), rel=1e-6)
    assert float(pretrained.logit_scale_from_nu(nu, reparam)) == pytest.approx(scale, rel=1e-6)


# ----------------------------------------------------------------------------- bundled configs


@pytest.mark.parametrize('name', sorted(CLIP_PARAMETERS))
def test_bundled_configs_have_clips_parameter_counts(name):
  cfg, _ = pretrained.to_model_config(name)
  shapes = layout.variable_shapes(cfg)
  params = sum(int(np.prod(s)) for path, s in shapes.items() if path[0] == 'params')
  assert params + 1 == CLIP_PARAMETERS[name]  # + the logit scale, our ν


@pytest.mark.parametrize('name', sorted(CLIP_PARAMETERS))
def test_bundled_configs_translate_both_ways(name):
  for variant in (name, f'{name}-quickgelu'):
    cfg, preprocess = pretrained.to_model_config(variant)
    assert cfg.quick_gelu == variant.endswith('-quickgelu')
    assert preprocess == {'mean': pretrained.OPENAI_MEAN, 'std': pretrained.OPENAI_STD, 'image_size': cfg.image_size}
    bundled, _, _ = pretrained.configs.read_config(variant)
    bundled['vision_cfg']['head_width'] = 64  # open_clip's default, which the export states
    assert pretrained.from_model_config(cfg) == {**bundled, 'quick_gelu': cfg.quick_gelu}


def test_default_normalisation_is_the_pipelines():
  from modgap_jax.data import pipeline

  assert (pretrained.OPENAI_MEAN, pretrained.OPENAI_STD) == (pipeline.CLIP_MEAN, pipeline.CLIP_STD)


def test_bundled_heads_follow_open_clip():
  rn50, _ = pretrained.to_model_config('RN50')
  assert (rn50.resnet.heads, rn50.resnet.norm, rn50.text.heads) == (32, 'batch', 8)  # 2048 channels / 64
  vit, _ = pretrained.to_model_config('ViT-L-14-quickgelu')
  assert (vit.vit.heads, vit.vit.patch_size, vit.text.heads, vit.text.width) == (16, 14, 12, 768)


def test_bundled_configs_equal_open_clips_when_installed():
  spec = importlib.util.find_spec('open_clip')
  if spec is None:
    pytest.skip('open_clip is not installed')
  directory = os.path.join(os.path.dirname(spec.origin), 'model_configs')
  for name in pretrained.bundled_names():
    with open(os.path.join(directory, f'{name}.json')) as f:
      assert pretrained.configs.read_config(name)[0] == json.load(f), name


@pytest.mark.parametrize(
  'change, field',
  [
    (lambda c: c['vision_cfg'].update(ls_init_value=0.1), 'vision_cfg.ls_init_value'),
    (lambda c: c['vision_cfg'].update(pool_type='avg'), 'vision_cfg.pool_type'),
    (lambda c: c['text_cfg'].update(proj_bias=True), 'text_cfg.proj_bias'),
    (lambda c: c['text_cfg'].update(hf_model_name='bert'), 'text_cfg.hf_model_name'),
    (lambda c: c.update(init_logit_bias=-10.0), 'init_logit_bias'),
    (lambda c: c['vision_cfg'].update(flavour=1), 'vision_cfg.flavour'),
    (lambda c: c.update(quick_gelu='yes'), 'quick_gelu'),
    (lambda c: c['vision_cfg'].update(image_size=[224, 192]), 'vision_cfg.image_size'),
  ],
)
def test_config_options_we_cannot_honour_are_named(change, field):
  cfg, _, _ = pretrained.configs.read_config('ViT-B-32')
  change(cfg)
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')) as error:
    pretrained.to_model_config(cfg)
  assert '\n' not in str(error.value)


def test_resnet_sizes_open_clip_cannot_pool_are_refused():
  cfg, _, _ = pretrained.configs.read_config('RN50')
  cfg['vision_cfg']['image_size'] = 63  # a 2x2 map, where open_clip's pool has 63 // 32 = 1 position
  with pytest.raises(ConfigError, match=r'vision_cfg\.image_size=63'):
    pretrained.to_model_config(cfg)
  cfg['vision_cfg']['layers'] = [3, 4, 6]
  with pytest.raises(ConfigError, match=r'vision_cfg\.layers'):
    pretrained.to_model_config(cfg)


def test_unknown_config_lists_the_bundled_ones():
  with pytest.raises(ConfigError, match='ViT-B-32-quickgelu') as error:
    pretrained.load(_weights('vit_gelu'), 'ViT-B-99')
  assert '\n' not in str(error.value)


# ----------------------------------------------------------------------------- export


def test_export_round_trip_is_exact(tmp_path):
  """load → export → load: the same variables and outputs, and the open_clip file's tensors bit for bit."""
  for name in MODELS:
    loaded = pretrained.load(_model_dir(name))
    out = tmp_path / name
    weights, config = pretrained.export(str(out), loaded.variables, loaded.model_config, preprocess=loaded.preprocess)
    again = pretrained.load(str(out))
    assert again.model_config == loaded.model_config and again.preprocess == loaded.preprocess
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.variables, loaded.variables)
    original = safetensors_io.read(_weights(name))
    exported = safetensors_io.read(weights)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
      np.testing.assert_array_equal(exported[key], value, err_msg=key)
  # Equal variables give equal outputs; one model's outputs checked as well.
  expected = dict(np.load(os.path.join(_model_dir('vit_quickgelu'), 'expected.npz')))
  outputs = _features(again, _inputs(expected, again.preprocess), expected['tokens'])
  reference = _features(loaded, _inputs(expected, loaded.preprocess), expected['tokens'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, outputs, reference)


def test_export_with_another_reparam_writes_log_beta(tmp_path):
  """A run under softplus: ν = 1.3 exports as log β(1.3) and loads back as 1.3."""
  loaded = pretrained.load(_model_dir('vit_gelu'))
  variables = jax.tree_util.tree_map(np.copy, loaded.variables)
  variables['params']['temperature']['nu'] = np.float32(1.3)
  reparam = Reparam('softplus')
  weights, _ = pretrained.export(str(tmp_path), variables, loaded.model_config, reparam=reparam)
  assert float(safetensors_io.read(weights)['logit_scale']) == pytest.approx(np.log(np.log1p(np.exp(1.3))), rel=1e-6)
  again = pretrained.load(str(tmp_path), reparam=reparam)
  assert float(again.variables['params']['temperature']['nu']) == pytest.approx(1.3, rel=1e-6)
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, again.variables['params']['image'], variables['params']['image']
  )


def test_export_refuses_configs_open_clip_lacks_before_writing(tmp_path):
  cfg = models.default_model_config()  # GroupNorm ResNet
  with pytest.raises(ConfigError, match='model.resnet.norm'):
    pretrained.export(str(tmp_path / 'out'), {}, cfg)
  assert not (tmp_path / 'out').exists()


def test_export_loads_in_open_clip(tmp_path):
  """open_clip's own 'local-dir:' loading of an export gives the features it gave before."""
  pytest.importorskip('torch')
  from experiments.benchmark import import_peer

  peer = import_peer()
  if peer is None:
    pytest.skip('open_clip is not installed')
  torch, open_clip = peer
  for name in MODELS:
    loaded = pretrained.load(_model_dir(name))
    pretrained.export(str(tmp_path / name), loaded.variables, loaded.model_config)
    model = open_clip.create_model(f'local-dir:{tmp_path / name}').eval()
    expected = dict(np.load(os.path.join(_model_dir(name), 'expected.npz')))
    images = torch.from_numpy(_inputs(expected, loaded.preprocess)).permute(0, 3, 1, 2).contiguous()
    tokens = torch.from_numpy(expected['tokens']).long()
    with torch.no_grad():  # The same weights; torch's thread count may change the last bits.
      np.testing.assert_allclose(model.encode_image(images).numpy(), expected['image_features'], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(model.encode_text(tokens).numpy(), expected['text_features'], rtol=1e-6, atol=1e-7)
    assert model.logit_scale.item() == float(expected['logit_scale'])


# ----------------------------------------------------------------------------- bad checkpoints


def _one_line_error(call, *patterns):
  with pytest.raises(ConfigError) as error:
    call()
  message = str(error.value)
  assert '\n' not in message
  for pattern in patterns:
    assert pattern in message, message
  return message


def _header(path):
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    return json.loads(f.read(length)), 8 + length


def test_truncated_file_names_the_first_tensor_it_cuts(tmp_path):
  source = _weights('rn_quickgelu')
  header, start = _header(source)
  header.pop('__metadata__', None)
  entries = sorted(header.items(), key=lambda item: item[1]['data_offsets'][0])
  # Cut in the middle of the tensor a third of the way into the data.
  name, entry = entries[len(entries) // 3]
  begin, end = entry['data_offsets']
  cut = tmp_path / 'cut.safetensors'
  cut.write_bytes(open(source, 'rb').read()[: start + (begin + end) // 2])
  _one_line_error(lambda: pretrained.load(str(cut), _model_dir('rn_quickgelu')), 'truncated', repr(name))
  # A file cut inside its header.
  cut.write_bytes(open(source, 'rb').read()[:100])
  _one_line_error(lambda: pretrained.load(str(cut), _model_dir('rn_quickgelu')), 'truncated', 'header')


def _rewrite(tmp_path, name, change):
  """The fixture model's tensors, changed by ``change(dict)``, written with our writer."""
  tensors = dict(safetensors_io.read(_weights(name)))
  change(tensors)
  path = tmp_path / 'changed.safetensors'
  safetensors_io.write(str(path), tensors)
  return str(path)


def test_misshapen_missing_and_extra_tensors_are_named(tmp_path):
  config = _model_dir('vit_gelu')
  key = 'transformer.resblocks.1.mlp.c_fc.weight'

  def shrink(t):
    t[key] = t[key][:-1]

  path = _rewrite(tmp_path, 'vit_gelu', shrink)
  _one_line_error(lambda: pretrained.load(path, config), repr(key), '(95, 24)', '(96, 24)')
  path = _rewrite(tmp_path, 'vit_gelu', lambda t: t.pop('visual.ln_post.bias'))
  _one_line_error(lambda: pretrained.load(path, config), "lacks tensor 'visual.ln_post.bias'")
  path = _rewrite(tmp_path, 'vit_gelu', lambda t: t.pop('logit_scale'))
  _one_line_error(lambda: pretrained.load(path, config), "'logit_scale'")
  path = _rewrite(tmp_path, 'vit_gelu', lambda t: t.update({'logit_bias': np.zeros((), np.float32)}))
  _one_line_error(lambda: pretrained.load(path, config), "'logit_bias'")


def test_weights_of_another_config_name_the_first_mismatch():
  # vit_quickgelu's weights against vit_gelu's shapes: the patch embedding comes first.
  _one_line_error(
    lambda: pretrained.load(_weights('vit_quickgelu'), _model_dir('vit_gelu')),
    "'visual.class_embedding'",
    '(48,)',
    '(32,)',
  )


def test_torchscript_is_refused_naming_safetensors():
  _one_line_error(
    lambda: pretrained.load(os.path.join(FIXTURES, 'torchscript.pt'), 'ViT-B-32-quickgelu'),
    'TorchScript',
    'open_clip_model.safetensors',
  )


def test_torch_file_without_torch_says_how_to_convert(monkeypatch):
  def no_torch():
    raise ImportError('no torch here')

  monkeypatch.setattr(files, 'import_torch', no_torch)
  _one_line_error(
    lambda: pretrained.load(os.path.join(FIXTURES, 'torch_save.bin'), 'ViT-B-32-quickgelu'),
    'needs torch',
    'safetensors.torch',
    'save_file',
  )


def test_torch_state_dict_loads_through_torch(tmp_path):
  """A .bin as open_clip writes them (torch.save of the state dict, wrapped as a training checkpoint)."""
  torch = pytest.importorskip('torch')
  name = 'rn_quickgelu'
  state = {k: torch.from_numpy(np.array(v)) for k, v in safetensors_io.read(_weights(name)).items()}
  path = tmp_path / 'epoch_1.pt'
  torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)
  from_bin = pretrained.load(str(path), _model_dir(name))
  from_safetensors = pretrained.load(_model_dir(name))
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_bin.variables, from_safetensors.variables)
  # A directory as open_clip publishes .bin weights: found by name, config beside them.
  torch.save(state, tmp_path / 'open_clip_pytorch_model.bin')
  shutil.copy(os.path.join(_model_dir(name), 'open_clip_config.json'), tmp_path)
  from_dir = pretrained.load(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_dir.variables, from_safetensors.variables)


def test_missing_config_beside_weights(tmp_path):
  shutil.copy(_weights('vit_gelu'), tmp_path / 'open_clip_model.safetensors')
  _one_line_error(lambda: pretrained.load(str(tmp_path)), 'open_clip_config.json', 'ViT-B-32')


# ----------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_of_every_dtype(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
    'f32': rng.normal(size=(3, 4)).astype(np.float32),
    'f16': rng.normal(size=(5,)).astype(np.float16),
    'bf16': rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16),
    'f64': rng.normal(size=(2,)),
    'i64_scalar': np.array(7, np.int64),
    'u8': np.arange(10, dtype=np.uint8),
    'empty': np.zeros((0, 3), np.float32),
    'bool': np.array([True, False]),
  }
  path = str(tmp_path / 'all.safetensors')
  safetensors_io.write(path, tensors, metadata={'format': 'pt'})
  back = safetensors_io.read(path)
  assert list(back) == list(tensors)
  for key, value in tensors.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape
    np.testing.assert_array_equal(back[key], value)
  _, start = _header(path)
  assert start % 8 == 0  # the data starts aligned, as the format's writers do


def test_safetensors_agrees_with_the_reference_package(tmp_path):
  st = pytest.importorskip('safetensors.numpy')
  rng = np.random.default_rng(1)
  tensors = {'a': rng.normal(size=(4, 2)).astype(np.float32), 'b': np.arange(6, dtype=np.int64).reshape(2, 3)}
  ours = str(tmp_path / 'ours.safetensors')
  safetensors_io.write(ours, tensors)
  for key, value in st.load_file(ours).items():
    np.testing.assert_array_equal(value, tensors[key])
  theirs = str(tmp_path / 'theirs.safetensors')
  st.save_file(tensors, theirs)
  for key, value in safetensors_io.read(theirs).items():
    np.testing.assert_array_equal(value, tensors[key])


# ----------------------------------------------------------------------------- CLIP's tokenizer


@pytest.fixture(scope='module')
def captions_and_ids():
  with open(os.path.join(FIXTURES, 'captions.json'), encoding='utf-8') as f:
    captions = json.load(f)
  return captions, np.load(os.path.join(FIXTURES, 'clip_tokens.npz'))['ids']


@pytest.fixture(scope='module')
def subset_tokenizer():
  return text.load_clip_tokenizer(os.path.join(FIXTURES, 'clip_vocab_subset.txt.gz'))


def test_clip_token_ids_equal_open_clips(subset_tokenizer, captions_and_ids):
  captions, ids = captions_and_ids
  assert len(captions) >= 250
  np.testing.assert_array_equal(subset_tokenizer.encode(captions, text.CLIP_CONTEXT_LENGTH), ids)


def test_clip_token_ids_with_the_full_vocabulary_when_open_clip_is_installed(captions_and_ids):
  spec = importlib.util.find_spec('open_clip')
  if spec is None:
    pytest.skip('open_clip (which ships the vocabulary) is not installed')
  vocab = os.path.join(os.path.dirname(spec.origin), 'bpe_simple_vocab_16e6.txt.gz')
  tokenizer = text.load_clip_tokenizer(vocab)
  captions, ids = captions_and_ids
  np.testing.assert_array_equal(tokenizer.encode(captions, 77), ids)


def test_clip_layout(subset_tokenizer, captions_and_ids):
  """SOT 49406, EOT 49407 = the largest id (our text tower's argmax), 0-padding, EOT kept when cut."""
  tok = subset_tokenizer
  assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (49408, 49406, 49407, 0)
  _, ids = captions_and_ids
  assert (ids[:, 0] == 49406).all() and (ids.argmax(axis=1) == (ids == 49407).argmax(axis=1)).all()
  long = tok.encode('x ' * 200, 77)[0]
  assert long[-1] == 49407 and (long[1:-1] != 0).all()
  assert tok.encode('', 5).tolist() == [[49406, 49407, 0, 0, 0]]


def test_clip_decode_and_json(subset_tokenizer):
  tok = subset_tokenizer
  ids = tok.encode(['An Emoji of a cat!', 'the end'], 77)
  assert tok.decode(ids) == ['an emoji of a cat !', 'the end']
  again = text.from_json(tok.to_json())
  assert again == tok and hash(again) == hash(tok) and again != text.BPETokenizer(tok.merges)
  np.testing.assert_array_equal(again.encode(['An Emoji of a cat!'], 77), ids[:1])


def test_clip_vocabulary_errors(tmp_path):
  bad = tmp_path / 'bad.txt'
  bad.write_text('#version: 0.2\ni n\nzq q\n', encoding='utf-8')
  _one_line_error(lambda: text.load_clip_tokenizer(str(bad), vocab_size=516), 'merge 2')
  _one_line_error(lambda: text.load_clip_tokenizer(str(bad)), '48894 merges')
