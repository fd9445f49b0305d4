"""Malformed input against the command line: bad settings, files, model directories, workdirs.

Every case must exit non-zero within seconds, with one message that names the setting — or
the file, line and field — at fault, and must leave a finished workdir exactly as it was.
"""

import hashlib
import json
import pathlib
import shutil
import time

import pytest
from conftest import save_tiny_model

from srit_jax import cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny model, good and bad input files, and a finished SFT workdir that nothing may change."""
  root = tmp_path_factory.mktemp("world")
  model = save_tiny_model(root / "model")
  (root / "demos.jsonl").write_text(
    "".join(
      json.dumps({"instruction": f"Add {i} and {i + 1}.", "output": f"{i} + {i + 1} = {2 * i + 1}."}) + "\n"
      for i in range(12)
    )
  )
  files = {
    "not_json.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c", output: "d"}\n',
    "no_output.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
    "empty_output.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "   "}\n',
    "number_output.jsonl": '{"instruction": "a", "output": 7}\n',
    "list_line.jsonl": '{"instruction": "a", "output": "b"}\n["not", "an", "object"]\n',
    "prompts_no_prompt.jsonl": '{"prompt": "hello"}\n{"id": 3}\n',
    "prompts_empty.jsonl": "\n\n",
    "prompts_list.json": '[{"prompt": "a"}, "b"]',
    "prompts.txt": "one prompt\nanother prompt\n",
    "demos_no_question.jsonl": json.dumps({"task": "arith", "id": "1", "output": "x", "gold": "3"}) + "\n",
  }
  for name, text in files.items():
    (root / name).write_text(text)
  (root / "latin1.jsonl").write_bytes(
    b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "d"}\n'
  )
  (root / "latin1_prompts.txt").write_bytes(b"first prompt\nsecond caf\xe9\n")

  no_tokenizer = root / "no_tokenizer"
  shutil.copytree(model, no_tokenizer)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    (no_tokenizer / name).unlink()
  broken_json, no_hidden, other_family, no_weights = (root / n for n in ("bad_json", "no_hidden", "gpt2", "no_weights"))
  for directory in (broken_json, no_hidden, other_family, no_weights):
    shutil.copytree(model, directory)
  (broken_json / "config.json").write_text('{"model_type": "llama", ')
  hf = json.loads((model / "config.json").read_text())
  (no_hidden / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if k != "hidden_size"}))
  (other_family / "config.json").write_text(
    json.dumps(hf | {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
  )
  (no_weights / "model.safetensors").unlink()
  # config.json fields of the wrong type, out of range or inconsistent with each other.
  for name, change in MODEL_CONFIG_CHANGES.items():
    shutil.copytree(model, root / name)
    (root / name / "config.json").write_text(json.dumps({**hf, **change}))
  _write_gguf_metadata(root / "bad_heads.gguf", head_count=4, head_count_kv=3)
  for name, adapter in ADAPTER_CONFIGS.items():
    (root / name).mkdir()
    (root / name / "adapter_config.json").write_text(json.dumps(adapter))

  done = root / "done"
  assert _cli("sft", *_sft_args(root, done), "--config.num_steps=2", "--config.save_every=2")[0] == 0
  return root


MODEL_CONFIG_CHANGES = {
  "width_as_text": {"hidden_size": "48"},
  "no_layers": {"num_hidden_layers": 0},
  "kv_heads_not_dividing": {"num_key_value_heads": 3},
  "width_not_dividing": {"hidden_size": 50, "head_dim": None},
  "eos_beyond_vocab": {"eos_token_id": 512},
  "negative_eps": {"rms_norm_eps": -1e-5},
  "layer_types_miscounted": {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
                             "layer_types": ["full_attention", "sliding_attention"]},
}  # fmt: skip
ADAPTER_BASE = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
ADAPTER_CONFIGS = {
  "adapter_rank_zero": {**ADAPTER_BASE, "r": 0},
  "adapter_alpha_text": {**ADAPTER_BASE, "lora_alpha": "eight"},
}


def _write_gguf_metadata(path, **heads):
  """A GGUF file with a Llama's metadata and no tensors."""
  import gguf

  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(2)
  writer.add_context_length(64)
  writer.add_embedding_length(48)
  writer.add_feed_forward_length(80)
  writer.add_head_count(heads["head_count"])
  writer.add_head_count_kv(heads["head_count_kv"])
  writer.add_vocab_size(512)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _sft_args(root, workdir):
  return [
    "--config=configs/sft.py:tiny",
    f"--config.model={root / 'model'}",
    f"--config.train_file={root / 'demos.jsonl'}",
    "--config.mesh.fsdp=1",
    f"--workdir={workdir}",
  ]


def _cli(*args) -> tuple[int, str]:
  """Runs the command line in this process; (exit status, what it printed to stderr)."""
  import contextlib
  import io

  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    code = cli.main(["srit-jax", *map(str, args)])
  return code, stderr.getvalue()


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
  return {
    str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(directory.rglob("*"))
    if p.is_file()
  }


R = "{root}"  # stands for the fixture's folder in the cases below
# The settings of the finished run in `done`, so that its checkpoints are not what stops a case.
SFT = ["sft", "--config=configs/sft.py:tiny", f"--config.model={R}/model", f"--config.train_file={R}/demos.jsonl"]
DONE_SETTINGS = ["--config.num_steps=2", "--config.save_every=2"]
REFINE = ["refine", "--config=configs/refine.py:tiny", f"--config.model={R}/model"]
EVAL = ["eval", "--config=configs/eval.py", f"--config.model={R}/model", "--config.limit=2"]
GENERATE = ["generate", "--config=configs/generate.py", f"--config.model={R}/model"]
DEMOS = ["demos", "--config=configs/demos.py"]
PIPELINE = ["pipeline", "--config=configs/demo.py", f"--config.student={R}/model"]

CASES = {
  # Settings: ranges, enumerations, the mesh, divisibility.
  "sft batch 0": ([*SFT, "--config.batch_size=0"], "batch_size = 0: must be >= 1"),
  "sft batch negative": ([*SFT, "--config.batch_size=-4"], "batch_size = -4: must be >= 1"),
  "save_every 0": ([*SFT, "--config.save_every=0"], "save_every = 0: must be >= 1"),
  "num_steps 0": ([*SFT, "--config.num_steps=0"], "num_steps = 0: must be >= 1"),
  "negative learning rate": ([*SFT, "--config.optimizer.learning_rate=-0.001"], "optimizer.learning_rate = -0.001: must be > 0"),
  "negative warmup": ([*SFT, "--config.optimizer.warmup_steps=-1"], "optimizer.warmup_steps = -1: must be >= 0"),
  "unknown schedule": ([*SFT, "--config.optimizer.schedule=sawtooth"], "optimizer.schedule = 'sawtooth': must be one of cosine, linear, constant"),
  "unknown dtype": ([*SFT, "--config.dtype=float64"], "dtype = 'float64': must be one of float32, bfloat16, float16"),
  "unknown remat": ([*SFT, "--config.remat_policy=most"], "remat_policy = 'most': must be one of none, full, dots"),
  "mesh axis 0": ([*SFT, "--config.mesh.fsdp=0"], "mesh.fsdp = 0: must be a positive integer or -1"),
  "two -1 axes": ([*SFT, "--config.mesh.data=-1"], "mesh: at most one axis may be -1"),
  "microbatches do not split": ([*SFT, "--config.batch_size=6", "--config.num_microbatches=4"], "batch_size = 6: does not split into num_microbatches = 4"),
  "batch does not divide the mesh": ([*SFT, "--config.batch_size=3", "--config.mesh.fsdp=2"], "batch_size 3 does not divide over the mesh's data x fsdp = 2 devices"),
  "unknown normalization": ([*SFT, "--config.loss_normalization=char"], "loss_normalization = 'char': must be one of token, sequence"),
  "no train file": (["sft", "--config=configs/sft.py:tiny", f"--config.model={R}/model"], "train_file: required"),
  "missing train file": ([*SFT[:3], f"--config.train_file={R}/nope.jsonl"], f"train_file = '{R}/nope.jsonl': no such file"),
  "missing model": (["sft", "--config=configs/sft.py:tiny", "--config.model=/no/such/model", f"--config.train_file={R}/demos.jsonl"], "model = '/no/such/model': not a directory, a .gguf file, a known model"),
  "unknown field": ([*SFT, "--config.batch_siz=4"], "--config.batch_siz: the config has no field 'batch_siz'; did you mean batch_size?"),
  "wrong type": ([*SFT, "--config.batch_size=four"], "--config.batch_size=four"),
  "unknown variant": (["sft", "--config=configs/sft.py:huge"], "configs/sft.py: unknown variant 'huge'"),
  "every problem at once": ([*SFT, "--config.batch_size=0", "--config.num_steps=0", "--config.dtype=fp8"], "num_steps = 0"),
  "negative beta": ([*REFINE, "--config.beta=-0.1"], "beta = -0.1: must be > 0"),
  "label smoothing above 0.5": ([*REFINE, "--config.label_smoothing=0.7"], "label_smoothing = 0.7: must be <= 0.5"),
  "unknown loss": ([*REFINE, "--config.loss_type=kto"], "loss_type = 'kto': must be one of sigmoid, ipo, hinge"),
  "unknown strategy": ([*REFINE, "--config.strategy=best"], "strategy = 'best': must be one of cot_vs_direct, correct_vs_incorrect, mixed"),
  "held-out share 1": ([*REFINE, "--config.heldout_fraction=1.0"], "heldout_fraction = 1.0: must be < 1"),
  "negative samples": ([*REFINE, "--config.num_cot_samples=-1"], "num_cot_samples = -1: must be >= 0"),
  "top_p 0": ([*REFINE, "--config.top_p=0.0"], "top_p = 0.0: must be > 0"),
  "negative temperature": ([*REFINE, "--config.temperature=-0.5"], "temperature = -0.5: must be >= 0"),
  "new questions without demos": ([*REFINE, "--config.new_questions=10"], "demos_file: required by questions='demos', teacher_fallback=True or new_questions"),
  "unknown pair packing": ([*REFINE, "--config.pair_packing=zip"], "pair_packing = 'zip': must be one of auto, none, sides, shared_prompt"),
  "nll loss with an nll weight": ([*REFINE, "--config.loss_type=nll", "--config.nll_weight=1.0"], "the loss type 'nll' is the NLL term alone; set it to 0"),
  "fallback without demos": ([*REFINE, "--config.teacher_fallback=True"], "demos_file: required by questions='demos', teacher_fallback=True or new_questions"),
  "missing demos file": ([*REFINE, "--config.questions=demos", f"--config.demos_file={R}/nope.jsonl"], f"demos_file = '{R}/nope.jsonl': no such file"),
  "missing reference": ([*REFINE, "--config.reference_model=/no/ref"], "reference_model = '/no/ref': not a directory"),
  "unknown task": ([*EVAL, "--config.tasks=gsm9k"], "tasks: unknown task 'gsm9k'"),
  "no task": ([*EVAL, "--config.tasks="], "tasks = '': name at least one task"),
  "missing data dir": ([*EVAL, "--config.data_dir=/no/data"], "data_dir = '/no/data': no such directory"),
  "no new tokens": ([*EVAL, "--config.max_new_tokens=0"], "max_new_tokens = 0: must be >= 1"),
  "no samples": ([*GENERATE, "--config.num_samples=0"], "num_samples = 0: must be >= 1"),
  "missing prompts": ([*GENERATE, f"--config.prompts_file={R}/nope.jsonl"], f"prompts_file = '{R}/nope.jsonl': no such file"),
  "unknown teacher": ([*DEMOS, "--config.teacher.kind=oracle"], "teacher.kind = 'oracle': must be one of local, openai, precomputed, reference"),
  "precomputed without path": ([*DEMOS, "--config.teacher.kind=precomputed"], "teacher.path: required by teacher.kind='precomputed'"),
  "teacher url": ([*DEMOS, "--config.teacher.kind=openai", "--config.teacher.base_url=ftp://x"], "teacher.base_url = 'ftp://x': must be an http(s) URL"),
  "unknown keep": ([*DEMOS, "--config.keep=best"], "keep = 'best': must be one of correct, all, first_correct"),
  "pipeline task": ([*PIPELINE, "--config.train_task=gsm9k"], "train_task: unknown task 'gsm9k'"),
  "pipeline rounds": ([*PIPELINE, "--config.refine_iterations=0"], "refine_iterations = 0: must be an integer >= 1"),
  "runs to reuse": ([*PIPELINE, "--config.reuse_phases_from=/no/runs"], "reuse_phases_from = '/no/runs': no such directory"),
  "control checkpoint": ([*PIPELINE, "--config.control_select_checkpoint=first"], "control_select_checkpoint = 'first': must be empty (as refine.select_checkpoint) or one of last, best_heldout"),
  # Files: JSON, encodings, fields.
  "records not JSON": ([*SFT[:3], f"--config.train_file={R}/not_json.jsonl"], f"{R}/not_json.jsonl:2: not valid JSON"),
  "record without output": ([*SFT[:3], f"--config.train_file={R}/no_output.jsonl"], f"{R}/no_output.jsonl:2: field 'output' is missing"),
  "record with an empty answer": ([*SFT[:3], f"--config.train_file={R}/empty_output.jsonl"], f"{R}/empty_output.jsonl:2: field 'output' is empty"),
  "record with a number": ([*SFT[:3], f"--config.train_file={R}/number_output.jsonl"], f"{R}/number_output.jsonl:1: field 'output' must be a string, got int"),
  "record not an object": ([*SFT[:3], f"--config.train_file={R}/list_line.jsonl"], f"{R}/list_line.jsonl:2: expected a JSON object, got list"),
  "records not UTF-8": ([*SFT[:3], f"--config.train_file={R}/latin1.jsonl"], f"{R}/latin1.jsonl:2: bytes that are not UTF-8"),
  "prompt missing": ([*GENERATE, f"--config.prompts_file={R}/prompts_no_prompt.jsonl"], f"{R}/prompts_no_prompt.jsonl:2: field 'prompt' is missing"),
  "no prompts": ([*GENERATE, f"--config.prompts_file={R}/prompts_empty.jsonl"], f"{R}/prompts_empty.jsonl: holds no prompts"),
  "prompt list item": ([*GENERATE, f"--config.prompts_file={R}/prompts_list.json"], f"{R}/prompts_list.json:1: expected a JSON object, got str"),
  "prompts not UTF-8": ([*GENERATE, f"--config.prompts_file={R}/latin1_prompts.txt"], f"{R}/latin1_prompts.txt:2: bytes that are not UTF-8 at column 11"),
  "demos without questions": ([*REFINE, "--config.questions=demos", f"--config.demos_file={R}/demos_no_question.jsonl"], f"{R}/demos_no_question.jsonl:1: field 'question' is missing"),
  # Model directories.
  "no tokenizer": ([*REFINE[:2], f"--config.model={R}/no_tokenizer"], f"{R}/no_tokenizer: has no tokenizer"),
  "config not JSON": ([*EVAL[:2], f"--config.model={R}/bad_json"], f"{R}/bad_json/config.json: not valid JSON"),
  "config without a field": ([*EVAL[:2], f"--config.model={R}/no_hidden"], f"{R}/no_hidden/config.json: field 'hidden_size' is missing"),
  "unsupported family": ([*EVAL[:2], f"--config.model={R}/gpt2"], "field 'model_type' is 'gpt2'"),
  "no weights": ([*EVAL[:2], f"--config.model={R}/no_weights"], f"{R}/no_weights: no model.safetensors"),
  "width as text": ([*EVAL[:2], f"--config.model={R}/width_as_text"], f"{R}/width_as_text/config.json: field 'hidden_size' is '48'; expected a positive integer"),
  "no layers": ([*EVAL[:2], f"--config.model={R}/no_layers"], f"{R}/no_layers/config.json: field 'num_hidden_layers' is 0; expected a positive integer"),
  "kv heads not dividing": ([*EVAL[:2], f"--config.model={R}/kv_heads_not_dividing"], f"{R}/kv_heads_not_dividing/config.json: field 'num_key_value_heads' is 3; it must divide num_attention_heads (4)"),
  "width not dividing heads": ([*EVAL[:2], f"--config.model={R}/width_not_dividing"], f"{R}/width_not_dividing/config.json: field 'hidden_size' is 50; it must be a multiple of num_attention_heads (4)"),
  "eos beyond vocabulary": ([*EVAL[:2], f"--config.model={R}/eos_beyond_vocab"], f"{R}/eos_beyond_vocab/config.json: field 'eos_token_id' is (512,); expected token ids below vocab_size (512)"),
  "negative epsilon": ([*EVAL[:2], f"--config.model={R}/negative_eps"], f"{R}/negative_eps/config.json: field 'rms_norm_eps' is -1e-05; expected a positive number"),
  "layer types miscounted": ([*EVAL[:2], f"--config.model={R}/layer_types_miscounted"], f"{R}/layer_types_miscounted/config.json: field 'layer_types' must list 3 of"),
  "gguf heads": ([*EVAL[:2], f"--config.model={R}/bad_heads.gguf"], f"{R}/bad_heads.gguf: field 'llama.attention.head_count_kv' is 3; it must divide llama.attention.head_count (4)"),
  "adapter rank zero": ([*SFT, "--config.lora.rank=4", f"--config.lora.init_adapter={R}/adapter_rank_zero"], f"{R}/adapter_rank_zero/adapter_config.json: field 'r' is 0; expected a positive integer"),
  "adapter alpha text": ([*SFT, "--config.lora.rank=4", f"--config.lora.init_adapter={R}/adapter_alpha_text"], f"{R}/adapter_alpha_text/adapter_config.json: field 'lora_alpha' is 'eight'; expected a positive number"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_one_clear_error_and_loses_nothing(world, name, tmp_path):
  args, message = CASES[name]
  args = [a.replace(R, str(world)) for a in args]
  message = message.replace(R, str(world))
  # SFT cases run against the finished SFT workdir; the others against one of their own.
  done = world / "done" if args[0] == "sft" else tmp_path / "workdir"
  done.mkdir(exist_ok=True)
  (done / "earlier_work.txt").write_text("what an earlier run left")
  before = _snapshot(done)
  if args[0] in ("sft", "refine", "eval", "generate") and not any(a.startswith("--config.mesh") for a in args):
    args.insert(2, "--config.mesh.fsdp=1")  # one device: the case's own problem is what stops it
  if args[0] == "sft":
    args[2:2] = [a for a in DONE_SETTINGS if a.split("=")[0] not in {b.split("=")[0] for b in args}]
  if args[0] in ("sft", "refine", "eval", "demos", "pipeline"):
    args.append(f"--workdir={done}")
  if args[0] == "generate":
    args.append(f"--out={done / 'generations.jsonl'}")
  start = time.perf_counter()
  code, stderr = _cli(*args)
  assert time.perf_counter() - start < 30
  assert code != 0
  assert message in stderr, stderr
  assert "Traceback" not in stderr
  assert _snapshot(done) == before


def test_the_corpus_is_large():
  assert len(CASES) >= 40


def test_stale_checkpoints_and_a_held_workdir_are_refused_and_lose_nothing(world):
  from srit_jax.phases import workdir_lock

  done = world / "done"
  before = _snapshot(done)
  code, stderr = _cli("sft", *_sft_args(world, done), "--config.num_steps=2", "--config.optimizer.learning_rate=0.5")
  assert code == 1 and "checkpoints of a run with other optimizer" in stderr
  with workdir_lock.hold(done):
    code, stderr = _cli("sft", *_sft_args(world, done), "--config.num_steps=2", "--config.save_every=2")
  assert code == 1 and f"{done}: in use by pid" in stderr
  assert _snapshot(done) == before


def test_generate_never_keeps_output_of_other_prompts_or_settings(world):
  out = world / "gen.jsonl"
  base = [*GENERATE, f"--config.prompts_file={R}/prompts.txt", "--config.max_new_tokens=4", "--config.mesh.fsdp=1"]
  base = [a.replace(R, str(world)) for a in base]
  assert _cli(*base, f"--out={out}")[0] == 0
  first = out.read_bytes()
  (world / "prompts2.txt").write_text("one prompt\na changed prompt\n")
  for changed in ([f"--config.prompts_file={world / 'prompts2.txt'}"], ["--config.temperature=0.7"]):
    code, stderr = _cli(*base, *changed, f"--out={out}")
    assert code == 1 and "holds generations made from other prompts, model or settings" in stderr
    assert out.read_bytes() == first  # refused, not mixed and not lost
  # Unchanged inputs: the file is kept as it is (resumed, nothing to add).
  assert _cli(*base, f"--out={out}")[0] == 0 and out.read_bytes() == first
