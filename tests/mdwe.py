"""Run a command under the same rule as systemd's MemoryDenyWriteExecute=yes.

    python tests/mdwe.py COMMAND [ARGS...]

systemd implements the option as a seccomp filter that refuses (EPERM) an mmap() asking for
memory both writable and executable, an mprotect()/pkey_mprotect() adding execute, and an
shmat() with SHM_EXEC. This installs that filter on itself (no root needed: no_new_privs
first) and then execs the command, which inherits it. If a library of ours needed W+X memory
(a JIT, an executable stack, old libffi trampolines), it fails here as it would in the unit.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
EPERM = 1

ARCHES = {
    # machine: (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}

LD_W_ABS, JEQ_K, JSET_K, AND_K, RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
ALLOW, DENY = 0x7FFF0000, 0x00050000 | EPERM
NR, ARCH, ARG2 = 0, 4, 16 + 8 * 2  # offsets in struct seccomp_data (args[2]'s low half)


def program() -> list[tuple[int, int, int, int]]:
    arch, mmap, mprotect, pkey_mprotect, shmat = ARCHES[platform.machine()]
    # (code, jump-if-true label, jump-if-false label, k); labels resolved below
    src: list[tuple[str, int, str, str, int]] = [
        ("", LD_W_ABS, "", "", ARCH),
        ("", JEQ_K, "", "allow", arch),
        ("", LD_W_ABS, "", "", NR),
        ("", JEQ_K, "mmap", "", mmap),
        ("", JEQ_K, "prot", "", mprotect),
        ("", JEQ_K, "prot", "", pkey_mprotect),
        ("", JEQ_K, "shm", "allow", shmat),
        ("mmap", LD_W_ABS, "", "", ARG2),
        ("", AND_K, "", "", PROT_WRITE | PROT_EXEC),
        ("", JEQ_K, "deny", "allow", PROT_WRITE | PROT_EXEC),
        ("prot", LD_W_ABS, "", "", ARG2),
        ("", JSET_K, "deny", "allow", PROT_EXEC),
        ("shm", LD_W_ABS, "", "", ARG2),
        ("", JSET_K, "deny", "allow", SHM_EXEC),
        ("deny", RET_K, "", "", DENY),
        ("allow", RET_K, "", "", ALLOW),
    ]
    where = {label: i for i, (label, *_) in enumerate(src) if label}
    out = []
    for i, (_, code, jt, jf, k) in enumerate(src):
        # BPF jumps are relative to the next instruction and only go forward
        t = where[jt] - i - 1 if jt else 0
        f = where[jf] - i - 1 if jf else 0
        out.append((code, t, f, k))
    return out


def install() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    prog = program()
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    os.execvp(sys.argv[1], sys.argv[1:])
