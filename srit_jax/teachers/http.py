"""A teacher behind an OpenAI-compatible chat-completions endpoint (vLLM, TGI, OpenAI).

Requests run `concurrency` at a time; 429 and 5xx answers, timeouts and dropped connections
are retried with exponential backoff (honouring Retry-After); every answer is appended to an
on-disk cache keyed by (teacher, prompt, sample index) before the next is asked, so that a
restarted run asks nothing twice. On a preemption notice (SIGTERM) the requests in flight finish
and are cached, none starts or is retried, and `Preempted` is raised. The API key is read from an
environment variable and never logged or saved.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import time
from collections.abc import Sequence

import requests
import tqdm

from srit_jax import preemption
from srit_jax.tasks import prompts
from srit_jax.tasks.example import Example
from srit_jax.teachers.base import Teacher, TeacherError, family_of
from srit_jax.teachers.cache import AnswerCache, cache_key

RETRIED_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAICompatibleTeacher(Teacher):
  def __init__(
    self,
    base_url: str,
    model: str,
    *,
    family: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_path: str | None = None,
    concurrency: int = 8,
    max_retries: int = 6,
    timeout_s: float = 120.0,
    backoff_s: float = 1.0,
    temperature: float = 0.7,
    max_tokens: int = 512,
    seed: int = 0,
    progress: bool = True,
  ):
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.name = model
    self.family = family or family_of(model)
    self.api_key_env = api_key_env
    self.cache = AnswerCache(cache_path)
    self.concurrency = concurrency
    self.max_retries = max_retries
    self.timeout_s = timeout_s
    self.backoff_s = backoff_s
    self.temperature = temperature
    self.max_tokens = max_tokens
    self.seed = seed
    self.progress = progress
    self.requests_sent = 0  # HTTP requests, retries included

  def _key(self, prompt: str, sample: int) -> str:
    return cache_key(self.base_url, self.model, self.temperature, self.max_tokens, self.seed, prompt, sample)

  def rationales(self, examples: Sequence[Example], num_samples: int) -> list[list[str]]:
    jobs = [
      (example, prompts.prompt(example, prompts.COT), sample) for example in examples for sample in range(num_samples)
    ]
    missing = [job for job in jobs if self._key(job[1], job[2]) not in self.cache]
    session = requests.Session()
    with (
      concurrent.futures.ThreadPoolExecutor(max(1, self.concurrency)) as pool,
      tqdm.tqdm(
        total=len(jobs),
        initial=len(jobs) - len(missing),
        desc=f"asking {self.model}",
        unit="answer",
        disable=not self.progress,
      ) as bar,
    ):
      futures = [pool.submit(self._answer, session, *job) for job in missing]
      pending = set(futures)
      try:
        while pending:
          done, pending = concurrent.futures.wait(pending, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
          for future in done:
            future.result()
            bar.update(1)
          if preemption.noticed():  # the requests in flight finish (and are cached); no new one starts
            raise preemption.Preempted(
              f"preempted: {len(self.cache)} answers of {self.model} are kept in {self.cache.path}; "
              "run the same command again to go on from there"
            )
      except BaseException:
        for f in futures:
          f.cancel()
        raise
    by_example: dict[str, list[str]] = {}
    for example, prompt, sample in jobs:
      by_example.setdefault(example.id, []).append(self.cache.get(self._key(prompt, sample)))
    return [by_example[e.id] for e in examples]

  def _answer(self, session: requests.Session, example: Example, prompt: str, sample: int) -> None:
    body = {
      "model": self.model,
      "messages": [{"role": "user", "content": prompt}],
      "temperature": self.temperature,
      "max_tokens": self.max_tokens,
      "seed": self.seed * 1_000_003 + sample,
    }
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env)
    if key:
      headers["Authorization"] = f"Bearer {key}"
    url = f"{self.base_url}/chat/completions"
    problem = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        if preemption.noticed():
          return  # not retried while the run stops: the rerun asks it again
        time.sleep(self._delay(attempt, problem))
      self.requests_sent += 1
      try:
        response = session.post(url, json=body, headers=headers, timeout=self.timeout_s)
      except (requests.Timeout, requests.ConnectionError) as e:
        problem = f"{type(e).__name__}"
        continue
      if response.status_code in RETRIED_STATUS:
        problem = f"HTTP {response.status_code}"
        retry_after = response.headers.get("Retry-After", "")
        if retry_after.replace(".", "", 1).isdigit():
          problem += f" retry-after {retry_after}"
        continue
      if response.status_code != 200:
        raise TeacherError(
          f"{self.model}: question {example.task}/{example.id} refused with HTTP {response.status_code}: "
          f"{response.text[:300]}"
        )
      try:
        text = response.json()["choices"][0]["message"]["content"]
      except (ValueError, KeyError, IndexError, TypeError):
        raise TeacherError(
          f"{self.model}: question {example.task}/{example.id}: malformed reply {response.text[:300]!r}"
        ) from None
      self.cache.put(
        self._key(prompt, sample), text, teacher=self.model, task=example.task, id=example.id, sample=sample
      )
      return
    raise TeacherError(
      f"{self.model}: question {example.task}/{example.id} sample {sample}: no answer after "
      f"{self.max_retries + 1} attempts (last: {problem}); answers so far are cached, rerun to resume"
    )

  def _delay(self, attempt: int, problem: str) -> float:
    if "retry-after" in problem:
      return float(problem.rsplit(" ", 1)[1])
    return self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
