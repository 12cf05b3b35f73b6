#!/usr/bin/env python3
"""llama_infer --chat on a pseudo-terminal, typed at as a person would: line editing (arrow keys) and
history through libedit, Ctrl-C during a reply (stops it, the chat goes on with the conversation
kept), Ctrl-C and Ctrl-D at an empty prompt (clean exit), /bye, /clear, /help, and every reply ending
with a newline before the next prompt.

usage: chat_pty_test.py BIN_DIR SOURCE_DIR MODELS_DIR     (exit 77 = skipped: MODELS_DIR absent)
"""
import os
import pty
import re
import select
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_model import export_chat_model  # noqa: E402

bin_dir, src_dir, models = sys.argv[1:4]
if not os.path.isdir(models):
    print(f"SKIP: needs {models} (the Llama 3 tokenizer); it is absent")
    sys.exit(77)
exe = os.path.join(bin_dir, "llama_infer")
failures = []
LEFT, UP, CTRL_C, CTRL_D = "\x1b[D", "\x1b[A", "\x03", "\x04"


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


class Session:
    """llama_infer with stdin, stdout and stderr on one pseudo-terminal."""

    def __init__(self, args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(exe, [exe] + args)
        self.out = ""

    def read_until(self, pattern, timeout=60):
        """Reads until `pattern` (a regex) matches the text after `self.mark`; returns the match or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.out[self.mark:], re.S)
            if m:
                return m
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    return re.search(pattern, self.out[self.mark:], re.S)
                self.out += chunk.decode(errors="replace")
        return None

    def drain(self, timeout):
        """Reads whatever arrives within `timeout` seconds, until the terminal closes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            r, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
            if not r:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.out += chunk.decode(errors="replace")

    def send(self, text):
        self.mark = len(self.out)
        os.write(self.fd, text.encode())

    def prompt(self, timeout=60):
        """Waits for the "> " prompt at the start of a line."""
        return self.read_until(r"(^|\n)> $", timeout)

    def wait(self, timeout=60):
        """Exit status, or None if it is still running after `timeout` (then it is killed)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.drain(0.2)  # so that the child never blocks on a full terminal
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.drain(1)  # what it wrote last (the stats line)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return None

    mark = 0


with tempfile.TemporaryDirectory() as tmp:
    # A long context, so that a reply runs for seconds (random weights rarely produce end of turn).
    model = export_chat_model(tmp, src_dir, models, max_positions=4096)
    base = ["--model", model, "--device", "cpu", "--chat", "--temperature", "0", "-t", "1"]

    # Line editing and history: "/hlp", two steps left, "e" -> "/help"; then the up arrow recalls it.
    s = Session(base + ["-n", "8"])
    check("the prompt appears", s.prompt() is not None, s.out[-300:])
    s.send("/hlp" + LEFT + LEFT + "e\r")
    check("arrow keys edit the line (/hlp -> /help)", s.read_until(r"commands:.*\n> $") is not None, s.out[-400:])
    s.send(UP + "\r")
    check("the up arrow recalls the last line", s.read_until(r"commands:.*\n> $") is not None, s.out[-400:])
    s.send("/nonsense\r")
    check("an unknown command says so", s.read_until(r"unknown command '/nonsense'.*\n> $") is not None, s.out[-300:])
    # A reply ends with a newline: the next prompt starts its own line.
    s.send("Hello there\r")
    m = s.read_until(r"Hello there\r?\n(.*?)\r?\n> $")
    check("a reply ends with a newline before the next prompt", m is not None and m.group(1).strip() != "",
          s.out[-300:])
    s.send("/clear\r")
    check("/clear", s.read_until(r"\(conversation cleared\).*\n> $") is not None, s.out[-300:])
    s.send(CTRL_D)
    code = s.wait()
    check("Ctrl-D at an empty prompt exits 0", code == 0, f"exit {code}: {s.out[-300:]}")
    check("the stats line has a line of its own", re.search(r"\n\[stats\] prompt tokens", s.out) is not None,
          s.out[-300:])

    # Ctrl-C during a long reply: the reply stops, the prompt comes back, the next turn is answered
    # after it (the conversation kept), and Ctrl-C at the empty prompt then ends the chat cleanly.
    s = Session(base + ["-n", "-1"])
    s.prompt()
    s.send("Tell me a long story\r")
    started = s.read_until(r"story\r?\n.{20}")
    s.send(CTRL_C)
    back = s.prompt(timeout=30)
    check("Ctrl-C stops the reply and returns to the prompt", started is not None and back is not None, s.out[-400:])
    s.send("And then?\r")
    again = s.read_until(r"then\?\r?\n.{20}")
    s.send(CTRL_C)
    check("the chat goes on after a stopped reply", again is not None and s.prompt(timeout=30) is not None,
          s.out[-400:])
    s.send(CTRL_C)
    code = s.wait()
    check("Ctrl-C at an empty prompt exits 0", code == 0, f"exit {code}: {s.out[-300:]}")
    m = re.search(r"\[stats\] prompt tokens (\d+), generated (\d+)", s.out)
    check("both turns were fed into one conversation",
          m is not None and int(m.group(1)) > 10 and "stop: interrupted" in s.out, s.out[-300:])

    # /bye ends the chat.
    s = Session(base + ["-n", "4"])
    s.prompt()
    s.send("/bye\r")
    code = s.wait()
    check("/bye exits 0", code == 0, f"exit {code}: {s.out[-300:]}")

sys.exit(1 if failures else 0)
