"""A small OpenAI-compatible chat-completions server for the HTTP teacher's tests, run as its own
process: `python openai_server.py` prints its port, then serves until killed.

It answers every question with a short chain of thought ending in "The answer is 7.", and
misbehaves on purpose, decided by the prompt's hash so that runs are repeatable: the first
attempt at some prompts gets a 429 (with Retry-After), at others a 500, at others a reply
slower than the client's timeout (none of this when the model asked for is "well-behaved");
a prompt containing "POISON" is always refused with 400. Each 200 reply takes 0.2 s, so that
concurrent requests overlap. GET /stats reports what happened.
"""

import contextlib
import hashlib
import http.server
import json
import sys
import threading
import time

LOCK = threading.Lock()
STATS = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "status": {}, "answered": {}, "auth": []}
ATTEMPTS: dict[str, int] = {}


def _misbehaviour(key: str) -> str:
  bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 6
  return {0: "429", 1: "500", 2: "slow"}.get(bucket, "ok")


class Handler(http.server.BaseHTTPRequestHandler):
  def log_message(self, *args):
    del args  # quiet: the tests read GET /stats rather than a request log

  def _reply(self, status, body, headers=()):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for name, value in headers:
      self.send_header(name, value)
    self.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
      self.wfile.write(data)

  def do_GET(self):
    with LOCK:
      self._reply(200, STATS)

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    prompt = body["messages"][-1]["content"]
    key = f"{prompt}|{body.get('seed')}"
    with LOCK:
      STATS["requests"] += 1
      STATS["in_flight"] += 1
      STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
      STATS["auth"] = sorted(set(STATS["auth"]) | {self.headers.get("Authorization", "")})
      attempt = ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    try:
      well_behaved = body["model"] == "well-behaved"
      behaviour = _misbehaviour(key) if attempt == 1 and not well_behaved else "ok"
      if "POISON" in prompt:
        status, reply, headers = 400, {"error": {"message": "this question is refused"}}, ()
      elif behaviour == "429":
        status, reply, headers = 429, {"error": {"message": "slow down"}}, (("Retry-After", "0.1"),)
      elif behaviour == "500":
        status, reply, headers = 500, {"error": {"message": "internal"}}, ()
      else:
        time.sleep(2.0 if behaviour == "slow" else 0.2)
        question = prompt.split("Question: ", 1)[-1].split("\n", 1)[0]
        text = f"Reading '{question[:30]}' carefully: 3 + 4 = 7. The answer is 7."
        status, headers = 200, ()
        reply = {
          "id": "x",
          "object": "chat.completion",
          "model": body["model"],
          "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if behaviour != "slow":  # a slow reply arrives after the client's timeout: never delivered
          with LOCK:
            STATS["answered"][key] = STATS["answered"].get(key, 0) + 1
      outcome = "slow" if behaviour == "slow" else str(status)
      with LOCK:
        STATS["status"][outcome] = STATS["status"].get(outcome, 0) + 1
    finally:
      # Out of flight before the reply is written: once the client has it, its next request may
      # arrive before this thread runs again.
      with LOCK:
        STATS["in_flight"] -= 1
    self._reply(status, reply, headers)


if __name__ == "__main__":
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  print(server.server_address[1], flush=True)
  sys.stdout.close()
  server.serve_forever()
