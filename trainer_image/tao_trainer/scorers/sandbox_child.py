"""The child half of the python_tests sandbox. `sandbox.py` runs this file as a script with
`python -I -S -B -X utf8` in a fresh directory; the scorer itself never runs it in-process
(importing it does nothing).

Order matters: read the job from stdin, set resource limits, disarm a few unaudited `posix`
functions, install the audit hook, and only then compile and run the candidate's code and the tests.
The hook and the harness read nothing from module globals: the deny lists below are copied into
local variables (closures) before the hook is installed, since the candidate can rebind this module's
globals through `sys.modules["__main__"]`. The ways to reach those locals (frames: `sys._getframe`,
`tb_frame`, `gi_frame`, trace and profile functions; the garbage collector's object lists; code
objects made from bytes) are refused by the hook itself.

Results go to an inherited file descriptor (never stdout), one line each, prefixed with a per-run
nonce the candidate is not given:

    <nonce> b <ascii event>               an operation the sandbox blocked (the first few)
    <nonce> c <ascii error>               the candidate's code failed to compile or raised
    <nonce> s <ascii error>               the tests' module-level code raised
    <nonce> t <index> <0|1> <ascii error> one test's outcome
    <nonce> d                             finished
"""

from __future__ import annotations

import sys

# Calls the sandbox refuses outright: processes, signals, limits, network, links, directory
# changes (the working directory must stay the sandbox: relative paths are checked against it).
_DENIED_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.startfile",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "resource.setrlimit",
        "resource.prlimit",
        "sys.addaudithook",
        "os.chdir",
        "os.symlink",
        "os.link",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.sethostname",
        "pty.spawn",
        "shutil.chown",
        # Frames and the collector lead to the harness's locals (nonce, counters, deny lists).
        "sys._current_frames",
        "sys._current_exceptions",
        "sys.settrace",
        "sys.setprofile",
        "sys.monitoring.register_callback",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        # (Hand-made bytecode, which reads and writes arbitrary memory, cannot be refused here:
        # every import of a cached module uses marshal.loads, and types.coroutine uses code.replace.
        # The OS layer is what holds against it.)
        "sqlite3.enable_load_extension",
        "sqlite3.load_extension",
    }
)
# Refused with ValueError ("call stack is not deep enough"), which namedtuple, typing and enum
# already handle: they fall back to not knowing their caller's module.
_FRAME_EVENTS = frozenset({"sys._getframe", "sys._getframemodulename"})
# Attributes whose reading is audited as `object.__getattr__` and that hand out a frame.
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
# Events that change the file system: (indices of path arguments, indices of dir_fd arguments).
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.truncate": ((0,), ()),
    "os.utime": ((0,), (3,)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
}
# Modules that reach native code or process creation without an audit event, and modules whose
# pristine copy a re-import would bring back (posix, _posixsubprocess and _imp are loaded already, so
# only an attempt to load them afresh raises the event).
_DENIED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "cffi",
        "_cffi_backend",
        "posix",
        "_imp",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testmultiphase",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_xxinterpqueues",
        "_interpreters",
        "_signal",
        "sys",
        "builtins",
        "gc",
        "_testsinglephase",
        "_lsprof",
        "_tracemalloc",
        "faulthandler",
        "resource",
    }
)
# sqlite3 opens files (ATTACH) without an audit event: only where the OS layer confines writes.
_SQLITE_MODULES = frozenset({"sqlite3", "_sqlite3"})
# posix functions that change the system without raising an audit event.
_DISARMED = (
    "mkfifo",
    "mknod",
    "memfd_create",
    "chroot",
    "setns",
    "unshare",
    "pidfd_open",
    "setuid",
    "setgid",
    "seteuid",
    "setegid",
    "setreuid",
    "setresuid",
    "setregid",
    "setresgid",
    "setgroups",
    "sched_setaffinity",
    "eventfd",
)
# signal functions the candidate may not use: handlers (e.g. ignoring SIGXCPU), timers, masks.
_SIGNAL_DISARMED = (
    "signal",
    "setitimer",
    "alarm",
    "pthread_kill",
    "pthread_sigmask",
    "raise_signal",
    "sigwait",
    "sigwaitinfo",
    "sigtimedwait",
    "siginterrupt",
    "set_wakeup_fd",
    "pidfd_send_signal",
)
_WRITE_FLAGS_NAMES = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_READABLE_SYSTEM_PATHS = (
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/usr/share/zoneinfo",
    "/etc/localtime",
)
_MAX_REPORTED_BLOCKS = 16
# Files opened for writing and directories made, per run: with RLIMIT_FSIZE this bounds the disk
# a run can fill.
_MAX_CREATIONS = 128
_ERROR_CHARS = 300


def _main() -> None:  # noqa: C901 - one function on purpose: its locals are the harness's only state
    import builtins
    import contextlib
    import json
    import os
    import resource

    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    if job.get("probe"):  # sandbox_os: does this wrapper start an interpreter at all?
        sys.stdout.write("probe ok\n")
        return
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the candidate reads EOF, not the rest of the job
    os.close(null)

    # Everything used after the candidate starts is bound here, not looked up later.
    nonce: str = job["nonce"]
    out_fd: int = job["fd"]
    box: str = os.path.realpath(job["box"])
    write = os.write
    exit_now = os._exit
    stat = os.stat
    str_type, bytes_type, int_type, type_of, isinstance_of, ascii_of = (
        str,
        bytes,
        int,
        type,
        isinstance,
        ascii,
    )
    compile_code, exec_code, callable_, dict_get, len_of = compile, exec, callable, dict.get, len
    any_of, getattr_of, hasattr_of, enumerate_of = any, getattr, hasattr, enumerate
    base_exception, permission_error, type_error = BaseException, PermissionError, TypeError
    write_flags = 0
    for flag_name in _WRITE_FLAGS_NAMES:
        write_flags |= getattr(os, flag_name)
    roots = [box]
    for entry in [*sys.path, *_READABLE_SYSTEM_PATHS]:
        if entry:
            roots.append(os.path.normpath(os.path.abspath(entry)))
            roots.append(os.path.realpath(entry))
    read_roots = tuple(roots)
    blocked: list[str] = []
    creations = [0]
    # The policy, as locals: rebinding this module's globals changes nothing from here on.
    denied_events = frozenset(_DENIED_EVENTS)
    frame_attributes = frozenset(_FRAME_ATTRIBUTES)
    frame_events = frozenset(_FRAME_EVENTS)
    value_error = ValueError
    denied_modules = frozenset(_DENIED_MODULES | (frozenset() if job.get("sqlite") else _SQLITE_MODULES))
    path_events = {event: (tuple(paths), tuple(fds)) for event, (paths, fds) in _PATH_EVENTS.items()}
    max_creations = int_type(_MAX_CREATIONS)
    max_blocks = int_type(_MAX_REPORTED_BLOCKS)
    error_chars = int_type(_ERROR_CHARS)

    def emit(*fields: str) -> None:
        try:  # noqa: SIM105 - contextlib's code is the candidate's to patch; this is not
            write(out_fd, (nonce + " " + " ".join(fields) + "\n").encode("utf-8"))
        except base_exception:
            pass  # a closed or full channel: the runner reports the run as crashed

    def text(value: object) -> str:
        """A plain str of `value` for the report (user classes may define __str__ or subclass str)."""
        try:
            result = str_type(value)
            return str_type.__str__(result) if isinstance_of(result, str_type) else "?"
        except base_exception:
            return "?"

    def describe(exc: BaseException) -> str:
        name = text(getattr_of(type_of(exc), "__name__", "Exception"))
        message = text(exc)
        line = name + ": " + message if message else name
        return ascii_of(line[:error_chars])

    # ------------------------------------------------------------------ limits
    for limit_name, (soft, hard) in job["limits"].items():
        resource_id = getattr(resource, limit_name, None)
        if resource_id is None:
            continue
        # A hard limit already lower fails; the others still apply.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource_id, (soft, hard))

    # ------------------------------------------------------------------ unaudited functions
    for module in (sys.modules.get("posix"), os):
        for name in _DISARMED:
            if module is not None and hasattr(module, name):
                delattr(module, name)
    import signal  # loads _signal, whose re-import (for pristine functions) the hook then refuses

    for module in (sys.modules.get("_signal"), signal):
        for name in _SIGNAL_DISARMED:
            if module is not None and hasattr(module, name):
                delattr(module, name)

    # ------------------------------------------------------------------ the audit hook
    def plain(path: object) -> str | None:
        if isinstance_of(path, str_type):
            return str_type.__str__(path)
        if isinstance_of(path, bytes_type):
            # isinstance_of is the pinned isinstance, which mypy cannot narrow through.
            return bytes_type.decode(path, "utf-8", "surrogateescape")  # type: ignore[arg-type]
        return None  # path-like objects could answer differently on each call: refused

    def absolute(path: str) -> str:
        # Lexical only: the candidate cannot create links, and the working directory is the box.
        if not path.startswith("/"):
            path = box + "/" + path
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        return "/" + "/".join(parts)

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        for root in roots:  # noqa: SIM110 - builtins.any may be patched by then
            if path == root or path.startswith(root + "/") or root == "/":
                return True
        return False

    def is_directory(path: str) -> bool:
        try:
            return (stat(path).st_mode & 0o170000) == 0o040000
        except base_exception:
            return False

    def deny(event: str, error: type[Exception] = permission_error, report: bool = True) -> None:
        if report and len_of(blocked) < max_blocks:
            blocked.append(event)
            emit("b", ascii_of(event))
        raise error("sandbox: " + event + " is not allowed")

    def check_open(args: tuple[object, ...]) -> None:
        path, mode, flags = args
        if isinstance_of(path, int_type):
            return  # an already open descriptor
        name = plain(path)
        if name is None:
            deny("open (path-like object: pass a str)")
            return
        full = absolute(name)
        mode_text = plain(mode) if mode is not None else ""
        # isinstance_of is the pinned isinstance, which mypy cannot narrow through.
        writing = (isinstance_of(flags, int_type) and flags & write_flags) or (  # type: ignore[operator]
            mode_text is not None and any_of(char in mode_text for char in "wax+")
        )
        if writing:
            if not inside(full, (box,)):
                deny("open for writing outside the sandbox")
            creations[0] += 1
            if creations[0] > max_creations:
                deny("open for writing: too many files")
            return
        if inside(full, (box,)):
            return
        # A directory descriptor outside the box would anchor dir_fd-relative writes elsewhere.
        if not inside(full, read_roots) or is_directory(full):
            deny("open outside the sandbox")

    def check_read(event: str, target: object) -> None:
        if target is None or isinstance_of(target, int_type):
            return
        name = plain(target)
        if name is None:
            deny(event + " (path-like object: pass a str)")
            return
        full = absolute(name)
        if not inside(full, (box,)) and not inside(full, read_roots):
            deny(event + " outside the sandbox")

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            check_open(args)
        elif event in denied_events:
            deny(event)
        elif event in frame_events:
            deny(event, value_error, False)  # routine (namedtuple, typing): not reported
        elif event == "object.__getattr__":
            if len_of(args) > 1 and plain(args[1]) in frame_attributes:
                deny("frame access (" + text(args[1]) + ")")
        elif event == "import":
            module_name = plain(args[0]) or ""
            if module_name.split(".")[0] in denied_modules:
                deny("import " + module_name)
        elif event.startswith("ctypes."):
            deny(event)
        elif event in ("os.listdir", "os.scandir"):
            check_read(event, args[0] if args else None)
        elif event == "sqlite3.connect":
            database = plain(args[0]) if args else None
            if database not in ("", ":memory:") and (
                database is None or not inside(absolute(database), (box,))
            ):
                deny("sqlite3.connect outside the sandbox")
        elif event in path_events:
            if event == "os.mkdir":
                creations[0] += 1
                if creations[0] > max_creations:
                    deny("os.mkdir: too many directories")
            path_indices, dir_fd_indices = path_events[event]
            for index in dir_fd_indices:  # -1 (or None) when no dir_fd was given
                if index < len_of(args) and args[index] is not None and args[index] != -1:
                    deny(event + " with dir_fd")
            for index in path_indices:
                target = args[index]
                if isinstance_of(target, int_type):
                    continue
                name = plain(target)
                if name is None or not inside(absolute(name), (box,)):
                    deny(event + " outside the sandbox")

    # subprocess (and so asyncio) imports _posixsubprocess; its fork_exec raises no audit event of
    # its own, so the module is loaded now with that function replaced. Removing it from sys.modules
    # to load a pristine copy raises an "import" event, which the hook refuses.
    try:
        import _posixsubprocess
    except ImportError:
        pass
    else:

        def no_fork_exec(*args: object, **kwargs: object) -> None:
            deny("_posixsubprocess.fork_exec")

        # A refusing stand-in: its signature differs from fork_exec's on purpose.
        _posixsubprocess.fork_exec = no_fork_exec  # type: ignore[assignment]
        del _posixsubprocess

    os.chdir(box)
    if job.get("memory_bytes"):  # the address-space limit goes last: the setup above allocates
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    sys.addaudithook(hook)

    # ------------------------------------------------------------------ the candidate
    namespace: dict[str, object] = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec_code(compile_code(job["code"], "<candidate>", "exec", dont_inherit=True), namespace)
    except base_exception as exc:
        emit("c", describe(exc))
        emit("d")
        exit_now(0)

    # ------------------------------------------------------------------ the tests
    names: list[str] = job["names"]
    try:
        tests = compile_code(job["tests"], "<tests>", "exec", dont_inherit=True)
    except base_exception as exc:
        emit("s", describe(exc))
        emit("d")
        exit_now(0)
    try:
        exec_code(tests, namespace)
    except base_exception as exc:
        if not names:
            emit("t", "0", "0", describe(exc))
        else:
            emit("s", describe(exc))
        emit("d")
        exit_now(0)
    if not names:
        emit("t", "0", "1", "''")
        emit("d")
        exit_now(0)
    for index, name in enumerate_of(names):
        function = dict_get(namespace, name)
        outcome = "1"
        error = "''"
        try:
            if not callable_(function):
                raise type_error(f"{name} is not a function")
            result = function()
            if hasattr_of(result, "__await__"):
                import asyncio

                # An async test, on a plain loop: asyncio.run would install a SIGINT handler, and
                # signal.signal is disarmed. hasattr_of is the pinned hasattr (mypy cannot narrow it).
                loop = asyncio.new_event_loop()
                try:
                    loop.run_until_complete(result)  # type: ignore[arg-type]
                finally:
                    loop.close()
        except base_exception as exc:
            outcome = "0"
            error = describe(exc)
        emit("t", str_type(index), outcome, error)
    emit("d")
    exit_now(0)


if __name__ == "__main__":
    _main()
