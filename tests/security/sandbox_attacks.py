"""Escape attempts against the python_tests sandbox: each is candidate code defining `escaped()`.

The tests of every attempt are `assert escaped()`: a test that PASSES means the attempt worked (or the
harness was fooled into reporting a pass), so a contained attempt always scores 0. Side effects are
checked from outside as well: nothing may appear in OUTSIDE, the planted secret may not show up in
any output, the listener on 127.0.0.1 may not be reached, and the runner (the sandbox's parent) must
survive. Every attempt is bounded (few forks, few MiB) so that a failure cannot hurt the machine.

Placeholders: {outside} (a world-writable directory outside the box), {planted} (a world-readable
file holding a secret), {port} (a listener on 127.0.0.1).
"""

from __future__ import annotations

ESCAPE_TEST = "def test_escape():\n    assert escaped()\n"

ATTACKS: dict[str, str] = {
    # ---------------------------------------------------------------- the six named in issue 15
    "deny_list_rebinding_then_execv": """
import os, sys
main = sys.modules["__main__"]
for name in ("_DENIED_EVENTS", "_DENIED_MODULES", "_FRAME_ATTRIBUTES", "_FRAME_EVENTS", "_SQLITE_MODULES"):
    setattr(main, name, frozenset())
main._PATH_EVENTS = {{}}
main._MAX_CREATIONS = 10 ** 9
try:
    os.execv(sys.executable, [sys.executable, "-c", "open('{outside}/execv', 'w').write('x')"])
except Exception:
    pass
def escaped():
    return os.path.exists("{outside}/execv")
""",
    "read_parent_environ_via_proc": """
import os
found = []
pids = [os.getppid()]
try:
    pids += [int(p) for p in os.listdir("/proc") if p.isdigit()]
except Exception:
    pass
for pid in pids[:200]:
    try:
        with open(f"/proc/{{pid}}/environ", "rb") as f:
            data = f.read()
        if b"TAO_PLANTED_SECRET" in data:
            found.append(data)
    except Exception:
        pass
def escaped():
    return found
""",
    "connect_out_without_network_namespace": """
import socket
connected = []
for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM)):
    try:
        s = socket.socket(family, kind)
        s.settimeout(1)
        s.connect(("127.0.0.1", {port}))
        s.send(b"escaped")
        connected.append(kind)
    except Exception:
        pass
def escaped():
    return connected
""",
    "kill_the_parent": """
import os, signal
done = []
for attempt in (
    lambda: os.kill(os.getppid(), signal.SIGKILL),
    lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),
    lambda: signal.pthread_kill(0, signal.SIGKILL),
):
    try:
        attempt()
        done.append(1)
    except Exception:
        pass
def escaped():
    return done
""",
    "sqlite3_attach_outside_the_box": """
import os
try:
    import sqlite3
    c = sqlite3.connect(":memory:")
    c.execute("ATTACH DATABASE '{outside}/attached.db' AS x")
    c.execute("CREATE TABLE x.t (a)")
    c.commit()
except Exception:
    pass
def escaped():
    return os.path.exists("{outside}/attached.db")
""",
    "beat_the_file_count_limit": """
import os, sys
sys.modules["__main__"]._MAX_CREATIONS = 10 ** 9
made = 0
for i in range(300):
    try:
        with open(f"f{{i}}", "w") as f:
            f.write("x")
        made += 1
    except Exception:
        break
def escaped():
    return made > 128
""",
    # ---------------------------------------------------------------- more of our own
    "ctypes_libc_system": """
try:
    import ctypes
    ctypes.CDLL(None).system(b"touch {outside}/ctypes")
except Exception:
    pass
import os
def escaped():
    return os.path.exists("{outside}/ctypes")
""",
    "fork_bomb_bounded": """
import os
children = 0
for _ in range(20):
    try:
        pid = os.fork()
    except Exception:
        break
    if pid == 0:
        os._exit(0)
    children += 1
def escaped():
    return children
""",
    "multiprocessing_and_subprocess": """
ran = []
try:
    import subprocess
    ran.append(subprocess.run(["true"]).returncode == 0)
except Exception:
    pass
try:
    import os
    ran.append(os.system("true") == 0)
except Exception:
    pass
try:
    import os
    ran.append(os.posix_spawn("/bin/true", ["true"], {{}}) > 0)
except Exception:
    pass
def escaped():
    return any(ran)
""",
    "memory_bomb": """
held = []
try:
    held.append(bytearray(1 << 30))  # 1 GiB against a 512 MiB address-space limit
except MemoryError:
    pass
def escaped():
    return held
""",
    "disk_fill_bounded": """
written = 0
for i in range(6):
    try:
        with open(f"fill{{i}}", "wb") as f:
            for _ in range(4):
                f.write(b"x" * (1 << 20))
                written += 1 << 20
    except Exception:
        pass
def escaped():
    # 2 MiB per file is the limit (RLIMIT_FSIZE); bubblewrap's box is a 16 MiB tmpfs
    import os
    return any(os.path.getsize(f"fill{{i}}") > (2 << 20) for i in range(6) if os.path.exists(f"fill{{i}}"))
""",
    "signal_handler_to_outlive_limits": """
installed = []
try:
    import signal
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    installed.append("SIGXCPU")
except Exception:
    pass
try:
    import signal
    signal.setitimer(signal.ITIMER_REAL, 100)
    installed.append("itimer")
except Exception:
    pass
def escaped():
    return installed
""",
    "forged_results_blind_writes": """
import os
line = "0" * 32 + " t 0 1 ''\\n" + "0" * 32 + " d\\n"
print(line)
for fd in range(3, 40):
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
def escaped():
    return False
""",
    "forged_results_nonce_from_frames": """
import os, sys
stolen = []
try:
    frame = sys._getframe()
    while frame is not None:
        if "nonce" in frame.f_locals:
            stolen.append((frame.f_locals["nonce"], frame.f_locals["out_fd"]))
        frame = frame.f_back
except Exception:
    pass
try:
    raise ValueError
except ValueError as exc:
    try:
        frame = exc.__traceback__.tb_frame
        while frame is not None:
            if "nonce" in frame.f_locals:
                stolen.append((frame.f_locals["nonce"], frame.f_locals["out_fd"]))
            frame = frame.f_back
    except Exception:
        pass
for nonce, fd in stolen:
    os.write(fd, f"{{nonce}} t 0 1 ''\\n{{nonce}} d\\n".encode())
    os._exit(0)
def escaped():
    return stolen
""",
    "gc_walk_to_the_hook_closure": """
found = []
try:
    import gc
    for obj in gc.get_objects():
        if getattr(obj, "__name__", "") == "hook" and getattr(obj, "__closure__", None):
            for cell in obj.__closure__:
                if isinstance(cell.cell_contents, frozenset):
                    cell.cell_contents = frozenset()
                    found.append(1)
except Exception:
    pass
import os
try:
    os.system("touch {outside}/gc")
except Exception:
    pass
def escaped():
    return found or os.path.exists("{outside}/gc")
""",
    "trace_function_collects_frames": """
import sys
frames = []
try:
    sys.settrace(lambda frame, event, arg: frames.append(frame))
    sys.settrace(None)
except Exception:
    pass
try:
    sys.setprofile(lambda frame, event, arg: frames.append(frame))
    sys.setprofile(None)
except Exception:
    pass
def escaped():
    return frames
""",
    "generator_frame_walk": """
found = []
def gen():
    yield 1
g = gen()
next(g)
try:
    frame = g.gi_frame
    found.append(frame)
except Exception:
    pass
def escaped():
    return found
""",
    "read_host_files": """
leaked = []
for path in ("{planted}", "/etc/passwd", "/etc/hostname", "/root/.bashrc"):
    try:
        with open(path) as f:
            leaked.append(f.read(64))
    except Exception:
        pass
def escaped():
    return leaked
""",
    "write_through_dir_fd_symlink_and_chdir": """
import os
for attempt in (
    lambda: os.open("dirfd", os.O_WRONLY | os.O_CREAT, dir_fd=os.open("{outside}", os.O_RDONLY)),
    lambda: (os.symlink("{outside}/link", "link"), open("link", "w").write("x")),
    lambda: (os.chdir("{outside}"), open("chdir", "w").write("x")),
    lambda: os.rename("/dev/null", "{outside}/renamed"),
    lambda: os.link("/etc/passwd", "hard"),
):
    try:
        attempt()
    except Exception:
        pass
def escaped():
    return os.listdir("{outside}")
""",
    "reimport_pristine_posix_and_subprocess": """
import sys
ran = []
for name in ("posix", "_posixsubprocess", "_signal", "builtins", "sys"):
    try:
        mod = sys.modules.pop(name)
        fresh = __import__(name)
        ran.append(name)
        sys.modules[name] = mod
    except Exception:
        pass
try:
    import posix
    posix.system("touch {outside}/posix")
except Exception:
    pass
import os
def escaped():
    return ran or os.path.exists("{outside}/posix")
""",
    "raise_resource_limits": """
raised = []
try:
    import resource
    resource.setrlimit(resource.RLIMIT_NPROC, (1000, 1000))
    raised.append("nproc")
except Exception:
    pass
try:
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    raised.append("fsize")
except Exception:
    pass
def escaped():
    return raised
""",
    "proc_self_mem_and_fifo": """
done = []
import os
for attempt in (
    lambda: open("/proc/self/mem", "r+b"),
    lambda: os.mkfifo("fifo"),
    lambda: os.memfd_create("x"),
    lambda: os.unshare(0),
    lambda: os.setuid(0),
):
    try:
        attempt()
        done.append(1)
    except Exception:
        pass
def escaped():
    return done
""",
    "patch_builtins_to_fool_the_harness": """
import builtins
builtins.isinstance = lambda *a: True
builtins.str = lambda *a, **k: "1"
builtins.BaseException = type("Never", (Exception,), {{}})
def escaped():
    return False
""",
    "unix_socket_and_listen": """
import socket
done = []
for attempt in (
    lambda: socket.socket(socket.AF_UNIX).connect("/run/docker.sock"),
    lambda: socket.socket().bind(("127.0.0.1", 0)),
    lambda: socket.getaddrinfo("localhost", 80),
):
    try:
        attempt()
        done.append(1)
    except Exception:
        pass
def escaped():
    return done
""",
    "add_audit_hook_and_exit_early": """
import sys, os
try:
    sys.addaudithook(lambda *a: None)
except Exception:
    pass
os._exit(0)
def escaped():
    return True
""",
}

# A benign candidate: must pass in every mode, or "contained" would mean nothing.
CONTROL = ("def add(a, b):\n    return a + b\n", "def test_add():\n    assert add(2, 3) == 5\n")
