"""Storage faults: a disk that fills mid-save, a workdir made read-only, a metrics file that
cannot be written, a figure that cannot be saved.

Each stops the run with one ``error:`` line (step, cause, last complete checkpoint, resume
command) and exit code 4, leaves the earlier checkpoints intact, and the same command on a
disk with room ends exactly where an uninterrupted run ends.

The full disk is provoked twice: on a real small file system (a 4 MiB tmpfs, else a
loop-mounted ext4 image) filled to leave room for one checkpoint, when this machine lets the
test mount one (as root); and by a patched tensorstore that fails the second checkpoint's
writes with the error a full disk gives. Both variants always appear in the report; the real
one is skipped, with the reason, only where mounting is not permitted.
"""

import errno
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys

import jax
import matplotlib
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from modgap_jax import checkpoint, events, run_io, storage, train
from modgap_jax.errors import StorageError
from tests.test_train import REPO, train_uninterrupted

matplotlib.use("Agg")

STEPS, EVERY = 9, 3
# configs/default.py shrunk to a digits run of a few seconds: the same fields for the entry
# point's flags and for the in-process reference run.
OVERRIDES = {
  "dataset.name": "digits_captions",
  "dataset.zero_shot_label": "label",
  "model.image_size": 8,
  "model.resnet.layers": (1, 1),
  "model.resnet.width": 8,
  "model.text.width": 16,
  "model.text.depth": 1,
  "model.text.heads": 2,
  "batch_size": 64,
  "progress_bar": False,
  "num_steps": STEPS,
  "checkpoint_every": EVERY,
  "log_every": 1,
  "eval_every": 100,
  "eval.linear_probe": False,
}
ERROR_LINE = re.compile(
  r"^error: at step (\d+): (.+); last complete checkpoint: step (\d+) in (\S+); (.+) and resume with: "
  r"(python -m experiments\.main .+)$"
)


def config_for(digits_dir):
  config = default.get_config()
  config.update_from_flattened_dict({**OVERRIDES, "dataset.data_dir": digits_dir})
  return config


def cli_flags(digits_dir):
  def text(value):
    return str(value) if not isinstance(value, tuple) else "(" + ", ".join(map(str, value)) + ")"

  items = {**OVERRIDES, "dataset.data_dir": digits_dir}
  return ["--config=configs/default.py", *(f"--config.{k}={text(v)}" for k, v in items.items())]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits_dir):
  """The uninterrupted run (in this process, on the same 4 emulated devices as the runs below)."""
  return train_uninterrupted(tmp_path_factory, config_for(digits_dir))


def read_log(workdir):
  return run_io.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def restored(workdir, step):
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def disk_bytes(directory):
  """Bytes the files under ``directory`` take in 4 KiB pages (how tmpfs counts them)."""
  pages = 0
  for root, _, files in os.walk(directory):
    pages += sum(-(-os.path.getsize(os.path.join(root, name)) // 4096) for name in files)
  return pages * 4096


# What the patched variant runs before the entry point: tensorstore's open fails every write
# of the given step's checkpoint as a full disk makes it fail (the message of a real one,
# shortened), in orbax's background thread. "chmod" makes the workdir and its checkpoint
# directory read-only once the given step's checkpoint is complete.
WRAPPER = r"""
import os, runpy, sys
fault, at = sys.argv[1], int(sys.argv[2])
if fault == "enospc":
  import tensorstore
  real_open = tensorstore.open
  def failing_open(spec, *args, **kwargs):
    if kwargs.get("create") and f"/{at}.orbax-checkpoint-tmp/" in str(spec):
      async def fail():
        raise ValueError(
          f'RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database at local file "{at}.orbax-checkpoint-tmp": '
          "Failed to write 4096 bytes to file 9: No space left on device [os_error_code='28']"
        )
      return fail()
    return real_open(spec, *args, **kwargs)
  tensorstore.open = failing_open
elif fault == "chmod":
  from modgap_jax import checkpoint
  real_save = checkpoint.Checkpointer.save
  def save(self, step, state):
    real_save(self, step, state)
    if step == at:
      self._wait()  # checkpoint `at` complete first
      os.chmod(self.directory, 0o555)
      os.chmod(self.workdir, 0o555)
  checkpoint.Checkpointer.save = save
sys.argv = ["experiments.main", *sys.argv[3:]]
runpy.run_module("experiments.main", run_name="__main__", alter_sys=True)
"""


def run_cli(args, prefix=()):
  """The entry point in a subprocess (this process's environment: 4 emulated CPU devices)."""
  return subprocess.run([*prefix, sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def one_error_line(done):
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, f"{len(lines)} stderr lines:\n{done.stderr[-3000:]}"
  match = ERROR_LINE.match(lines[0])
  assert match, lines[0]
  return match


@pytest.fixture
def small_disk(tmp_path):
  """A directory on a small file system of its own: a tmpfs, else a loop-mounted ext4 image.
  Skipped, saying why, where neither can be mounted."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  image = tmp_path / "disk.img"
  ways = {
    "tmpfs": [["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)]],
    "loop ext4": [
      ["truncate", "-s", "8M", str(image)],
      ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)],  # -m 0: no blocks reserved for root
      ["mount", "-o", "loop", str(image), str(mount_point)],
    ],
  }
  why = []
  for name, commands in ways.items():
    try:
      for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
          raise OSError(done.stderr.strip() or f"{command[0]} exited {done.returncode}")
    except OSError as e:  # not permitted, or no such program
      why.append(f"{name}: {e}")
      continue
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)
    return
  pytest.skip(f"no small file system can be mounted here ({'; '.join(why)}); the patched variant covers the full disk")


def fill_leaving(mount_point, room):
  """Fills the file system at ``mount_point`` up to ``room`` free bytes; returns the filler."""
  filler = mount_point / "filler"
  free = shutil.disk_usage(mount_point).free
  with open(filler, "wb") as f:
    f.write(b"\0" * max(free - room, 0))
  return filler


@pytest.mark.parametrize("disk", ["tmpfs", "patched"])
def test_a_disk_full_mid_save_stops_in_one_line_and_resumes_exactly(disk, tmp_path, digits_dir, straight, request):
  if disk == "tmpfs":
    mount_point = request.getfixturevalue("small_disk")
    # Room for the first checkpoint and the small files, not for a second checkpoint.
    filler = fill_leaving(mount_point, int(1.6 * disk_bytes(os.path.join(straight, "checkpoints", str(EVERY)))))
    workdir = str(mount_point / "run")
    failing = ["-m", "experiments.main", *cli_flags(digits_dir), f"--workdir={workdir}"]
  else:
    workdir = str(tmp_path / "run")
    failing = ["-c", WRAPPER, "enospc", str(2 * EVERY), *cli_flags(digits_dir), f"--workdir={workdir}"]
  done = run_cli(failing)

  assert done.returncode == StorageError.EXIT_CODE, done.stderr[-3000:]
  step, cause, last, directory, remedy, command = one_error_line(done).groups()
  assert (int(step), cause, int(last), remedy) == (2 * EVERY, f"no space left on {workdir}", EVERY, "free space")
  assert directory == os.path.join(workdir, "checkpoints")
  # The earlier checkpoint is complete and intact; the cut-short one is only a tmp directory.
  assert checkpoint.complete_steps(directory) == [EVERY]
  assert f"{2 * EVERY}.orbax-checkpoint-tmp" in os.listdir(directory)
  assert_same_tree(restored(workdir, EVERY), restored(straight, EVERY))

  assert shlex.split(command) == ["python", "-m", "experiments.main", *cli_flags(digits_dir), f"--workdir={workdir}"]

  # Resume on a disk with room: the printed command itself on the real disk; the same config
  # in this process for the patched one (one process start less).
  if disk == "tmpfs":
    os.remove(filler)  # free space, as the line says
    resumed = run_cli(shlex.split(command)[1:])
    assert resumed.returncode == 0 and not resumed.stderr.strip(), resumed.stderr[-3000:]
  else:
    train.train_and_evaluate(config_for(digits_dir), workdir)
  assert read_log(workdir) == read_log(straight)
  assert checkpoint.complete_steps(directory) == [EVERY, 2 * EVERY, STEPS]
  assert_same_tree(restored(workdir, STEPS), restored(straight, STEPS))


def test_a_workdir_made_read_only_stops_in_one_line(tmp_path, digits_dir):
  workdir = tmp_path / "run"
  prefix = ()
  if os.geteuid() == 0:  # root writes through permissions: run without that capability
    if shutil.which("setpriv") is None:
      pytest.skip("running as root without setpriv: chmod cannot make the workdir read-only for the run")
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
  try:
    done = run_cli(["-c", WRAPPER, "chmod", str(EVERY), *cli_flags(digits_dir), f"--workdir={workdir}"], prefix)
  finally:
    for path in (workdir, workdir / "checkpoints"):
      if path.exists():
        os.chmod(path, 0o755)
  assert done.returncode == StorageError.EXIT_CODE, done.stderr[-3000:]
  step, cause, last, directory, remedy, _ = one_error_line(done).groups()
  assert (int(step), int(last), remedy) == (2 * EVERY, EVERY, "restore write permission")
  assert cause == f"permission denied on {workdir / 'checkpoints'}"
  assert checkpoint.complete_steps(directory) == [EVERY]


def test_metrics_jsonl_that_cannot_be_written_stops_at_its_step(tmp_path, digits_dir, monkeypatch, straight):
  """From step 4 on, metrics.jsonl's lines go to /dev/full, which fails every write with
  ENOSPC: the error names step 4 and checkpoint 3, and the log holds steps 1-3 as written."""
  if not os.path.exists("/dev/full"):
    pytest.skip("no /dev/full on this machine")
  workdir = str(tmp_path / "run")
  real_write = run_io.MetricsLog.write

  def write(self, step, split, values):
    if step == EVERY + 1 and self._file.name != "/dev/full":
      self._file.close()
      self._file = open("/dev/full", "ab", buffering=0)
    real_write(self, step, split, values)

  monkeypatch.setattr(run_io.MetricsLog, "write", write)
  with pytest.raises(StorageError) as e:
    train.train_and_evaluate(config_for(digits_dir), workdir)
  monkeypatch.undo()
  assert e.value.step == EVERY + 1
  assert str(e.value) == (
    f"at step {EVERY + 1}: no space left on {workdir}; last complete checkpoint: step {EVERY} in "
    f"{os.path.join(workdir, 'checkpoints')}; free space"
  )
  assert read_log(workdir) == read_log(straight)[:EVERY]
  assert checkpoint.complete_steps(os.path.join(workdir, "checkpoints")) == [EVERY]


def test_close_gives_an_error_on_its_way_out_the_checkpoint_a_running_save_completes(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
  ckpt.save(1, {"a": np.arange(3.0)})  # written in the background
  error = StorageError("no space left on x", "free space", step=2, checkpoint_dir=ckpt.directory)
  with pytest.raises(StorageError) as raised:
    try:
      raise error
    finally:
      ckpt.close()
  assert raised.value is error and error.last_checkpoint == 1


def test_a_figure_that_cannot_be_saved_is_a_storage_error_and_leaves_no_file(tmp_path, monkeypatch):
  import matplotlib.pyplot as plt

  fig, _ = plt.subplots()

  def full(self, fname, **kwargs):
    with open(fname, "wb") as f:
      f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fname)

  monkeypatch.setattr(type(fig), "savefig", full)
  path = tmp_path / "curves.png"
  with pytest.raises(StorageError, match=f"^no space left on {tmp_path}; free space$"):
    run_io.save_figure(fig, str(path))
  assert os.listdir(tmp_path) == []  # neither the figure nor its partial temporary file
  assert not plt.fignum_exists(fig.number)  # closed all the same


def test_storage_failures_in_words(tmp_path):
  where = str(tmp_path)
  missing = tmp_path / "gone" / "checkpoints" / "6.orbax-checkpoint-tmp"

  def cause(error):
    failed = storage.failure(error, where)
    return failed and (failed.cause, failed.remedy)

  assert cause(OSError(errno.ENOSPC, "No space left on device")) == (f"no space left on {where}", "free space")
  assert cause(OSError(errno.EDQUOT, "Disk quota exceeded"))[0] == f"disk quota exceeded on {where}"
  assert cause(OSError(errno.EROFS, "Read-only file system"))[0] == f"read-only file system at {where}"
  # A file still to be created: its directory is what refused.
  assert cause(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new.json")))[0] == (
    f"permission denied on {where}"
  )
  # A vanished directory: the top of what vanished.
  assert (
    cause(FileNotFoundError(errno.ENOENT, "No such file", str(missing)))[0] == f"{tmp_path / 'gone'} no longer exists"
  )
  # tensorstore's errors: the errno it carries, else the status code.
  text = 'Error writing "a/0" in OCDBT database at local file "/x/": Failed writing: "/x/d/1"'
  assert cause(ValueError(f"RESOURCE_EXHAUSTED: {text}: No space left [os_error_code='28']"))[0].startswith("no space")
  assert cause(ValueError(f"RESOURCE_EXHAUSTED: {text} [os_error_code='122']"))[0].startswith("disk quota")
  assert cause(ValueError(f"PERMISSION_DENIED: {text}"))[0] == "permission denied on /x/d"
  # Not storage failures: left alone.
  assert cause(ValueError("could not broadcast input array")) is None
  assert cause(OSError(errno.EINVAL, "Invalid argument")) is None
  # The line's parts, with and without what is known.
  full = StorageError("no space left on /w", "free space", step=6, checkpoint_dir="/w/checkpoints", last_checkpoint=3)
  assert str(full) == "at step 6: no space left on /w; last complete checkpoint: step 3 in /w/checkpoints; free space"
  none_yet = StorageError("no space left on /w", "free space", step=1, checkpoint_dir="/w/checkpoints")
  assert "last complete checkpoint: none in /w/checkpoints" in str(none_yet)
  assert str(StorageError("no space left on /w", "free space")) == "no space left on /w; free space"


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def test_event_files_are_tfrecords_with_correct_checksums_and_the_resume_marker(tmp_path):
  log = events.EventLog(str(tmp_path), resume_step=3)
  log.scalars(4, "train", {"loss": 0.5, "tau": np.float32(0.07), "skip": float("nan"), "flag": True})
  log.close()
  (name,) = os.listdir(tmp_path)
  assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\..+", name)

  def masked(crc):  # TFRecord's masking of a CRC
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  from tensorboardX.proto import event_pb2

  data, records = (tmp_path / name).read_bytes(), []
  while data:
    header, data = data[:12], data[12:]
    (length,) = struct.unpack("<Q", header[:8])
    assert struct.unpack("<I", header[8:])[0] == masked(crc32c(header[:8]))
    payload, footer, data = data[:length], data[length : length + 4], data[length + 4 :]
    assert struct.unpack("<I", footer)[0] == masked(crc32c(payload))
    records.append(event_pb2.Event.FromString(payload))
  assert records[0].file_version == "brain.Event:2"
  assert records[1].step == 3 and records[1].session_log.status == event_pb2.SessionLog.START
  assert records[2].step == 4
  assert {v.tag: v.simple_value for v in records[2].summary.value} == {
    "train/loss": 0.5,
    "train/tau": pytest.approx(0.07),
  }
